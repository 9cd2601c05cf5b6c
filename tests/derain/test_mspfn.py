"""MSPFN: exact parameter counts, any input size, and the fast zero-state ConvLSTM vs the literal cell."""

from __future__ import annotations

import copy

import pytest
import torch

from derain import build_model
from derain.models.mspfn import MSPFN, ZeroStateConvLSTM


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "count"), [("mspfn", 20_995_776), ("mspfn-m17n1", 15_823_424)])
def test_parameter_counts_match_the_paper_code(name: str, count: int) -> None:
    assert n_params(build_model(name)) == count


def tiny() -> MSPFN:
    return MSPFN(channels=8, cfm_channels=4, lstm_channels=(4, 8, 8), units=2, rcabs=(1, 2, 1))


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere (PReLU alphas start at 0 and biases at 0, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5))


@pytest.mark.parametrize("size", [(32, 48), (37, 29)])
def test_fast_matches_literal_outputs_and_gradients(size: tuple[int, int]) -> None:
    fast = tiny()
    randomize(fast)
    literal = copy.deepcopy(fast)
    literal.fast = False
    assert fast.fast and not literal.fast
    x = torch.rand(2, 3, *size)
    target = torch.rand(2, 3, *size)
    out_fast, out_lit = fast(x), literal(x)
    assert out_fast.shape == x.shape
    torch.testing.assert_close(out_fast, out_lit, atol=1e-5, rtol=0)
    ((out_fast - target) ** 2).mean().backward()
    ((out_lit - target) ** 2).mean().backward()
    for (name, pf), (_, pl) in zip(fast.named_parameters(), literal.named_parameters(), strict=True):
        gf = pf.grad if pf.grad is not None else torch.zeros_like(pf)
        gl = pl.grad if pl.grad is not None else torch.zeros_like(pl)
        torch.testing.assert_close(gf, gl, atol=1e-5, rtol=1e-4, msg=f"gradient of {name}")


def test_dead_convlstm_weights_get_no_gradient_in_the_literal_cell() -> None:
    cell = ZeroStateConvLSTM(3, 4, fast=False)
    randomize(cell)
    cell(torch.rand(1, 3, 8, 8)).sum().backward()
    grad = cell.conv.weight.grad
    assert grad is not None
    assert torch.all(grad[:, 3:] == 0), "h-input weights must be dead with a zero state"
    assert torch.all(grad[8:12] == 0), "forget-gate weights must be dead with a zero state"
    assert grad[:8, :3].abs().sum() > 0 and grad[12:, :3].abs().sum() > 0


def test_real_config_runs_on_a_small_image_and_keeps_size() -> None:
    model = build_model("mspfn-m17n1").eval()
    x = torch.rand(1, 3, 21, 35)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    # Fresh init has PReLU = 0 and Xavier convs: output stays near the input (residual design).
    assert torch.isfinite(y).all()


def test_residual_formulation_zero_rain_gives_input() -> None:
    model = tiny()
    with torch.no_grad():
        model.rec_out.weight.zero_()
    x = torch.rand(1, 3, 24, 40)
    torch.testing.assert_close(model(x), x, atol=1e-6, rtol=0)


def test_coarse_fusion_residual_is_the_scales_own_shallow_feature() -> None:
    """Official graph: ``res2_lstmout += rain2`` (not the fused ``rain2_e``). With the CFM branch silenced, each
    scale's CFM output must equal its shallow feature even though coarser results were fused into its input."""
    model = tiny()
    randomize(model)
    with torch.no_grad():
        for cfm in model.cfm:
            cfm.expand[0].weight.zero_()
    seen: dict[str, torch.Tensor] = {}
    for i, (shallow, cfm) in enumerate(zip(model.shallow, model.cfm, strict=True)):
        shallow.register_forward_hook(lambda _m, _i, out, i=i: seen.__setitem__(f"f{i}", out))
        cfm.register_forward_hook(lambda _m, _i, out, i=i: seen.__setitem__(f"c{i}", out))
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 48))
    for i in range(3):  # full, 1/2, 1/4
        torch.testing.assert_close(seen[f"c{i}"], seen[f"f{i}"], atol=0, rtol=0)


def test_convlstm_initialised_like_the_official_code() -> None:
    """ConvLSTM convs: truncated normal σ = 1e-3 (cut at 2σ), zero bias; other convs Xavier; PReLU 0."""
    model = build_model("mspfn-lite")
    for cell in (m for m in model.modules() if isinstance(m, ZeroStateConvLSTM)):
        w = cell.conv.weight
        assert w.abs().max() <= 2e-3 and 0.7e-3 < w.std() < 1e-3  # truncation at 2σ shrinks σ to ~0.88e-3
        assert torch.all(cell.conv.bias == 0)
    assert model.shallow[0][0].weight.std() > 0.05  # Xavier, not the tiny LSTM init
    assert all(torch.all(m.weight == 0) for m in model.modules() if isinstance(m, torch.nn.PReLU))
