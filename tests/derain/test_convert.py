"""MSPFN conversion proven against the authors' own TF graph (the shared oracle), plus the converter's inference
and error paths on TF-named weights made here (which need no shared data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from derain import build_model
from derain.checkpoint import load_derainer
from derain.convert import ConversionError, _name_table, convert_mspfn, mspfn_from_tf_variables, save_converted
from derain.imageio import read_tensor

ORACLES = {"m17n1-u2": ("mspfn-m17n1", {"units": 2}, 5_756_384), "train-u2": ("mspfn", {"units": 2}, 6_364_896)}
TOL = 1e-4  # the bound on [-1, 1]; a faithful port measures ~1e-6


def oracle(shared_data: Path, variant: str) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = shared_data / "mspfn_tf_oracle" / variant
    with np.load(folder / "io.npz") as io:
        tensors = {k: torch.from_numpy(io[k]).permute(0, 3, 1, 2) for k in io.files}  # NHWC -> NCHW, BGR
    return folder, tensors


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "literal"])
@pytest.mark.parametrize("source", ["model.ckpt", "variables.npz"])
@pytest.mark.parametrize("variant", sorted(ORACLES))
def test_converted_model_reproduces_the_official_graph(shared_data: Path, variant: str, source: str,
                                                       fast: bool) -> None:
    """RGB in [0, 1] from input.png through the public forward equals the graph's BGR output on [-1, 1]."""
    folder, io = oracle(shared_data, variant)
    converted = convert_mspfn(folder / source)
    name, config, params = ORACLES[variant]
    assert (converted.name, converted.config) == (name, config)
    assert sum(p.numel() for p in converted.model.parameters()) == params  # every variable used once
    model = converted.model
    model.fast = fast
    with torch.no_grad():
        out = model(read_tensor(folder / "input.png")[None])
    diff = ((out * 2 - 1).flip(1) - io["output"]).abs().max().item()
    assert diff <= TOL, f"max abs difference {diff:.3g} on [-1, 1]"


@pytest.mark.parametrize("variant", sorted(ORACLES))
def test_bgr_core_matches_rain_layer_and_output(shared_data: Path, variant: str) -> None:
    """With the authors' BGR kept, the [-1, 1] core fed ``input_bgr`` gives their rain layer and output."""
    folder, io = oracle(shared_data, variant)
    model = convert_mspfn(folder / "variables.npz", rgb=False).model
    with torch.no_grad():
        out = model.forward_signed(io["input_bgr"])
    assert (out - io["output"]).abs().max().item() <= TOL
    assert ((io["input_bgr"] - out) - io["rain_res"]).abs().max().item() <= TOL


def test_optimizer_slots_are_ignored(shared_data: Path) -> None:
    """A training checkpoint also holds Adam slots and counters: they are skipped and counted."""
    folder, _ = oracle(shared_data, "m17n1-u2")
    with np.load(folder / "variables.npz") as npz:
        variables = {k: npz[k] for k in npz.files}
    plain = mspfn_from_tf_variables(variables)
    noisy = dict(variables)
    for k in list(variables)[:5]:
        noisy[f"{k}/Adam"] = noisy[f"{k}/Adam_1"] = np.ones_like(variables[k])
    noisy.update({"beta1_power": np.float32(0.9), "beta2_power": np.float32(0.99), "global_step": np.int64(3)})
    converted = mspfn_from_tf_variables(noisy)
    assert converted.source["ignored_variables"] == 13
    for (k, a), (_, b) in zip(plain.model.state_dict().items(), converted.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


# -- TF-named weights made here: the converter's inference and errors (no shared data needed) ----------------
def to_tf_variables(model: nn.Module, scope: str = "generator", unit: str = "BCM") -> dict[str, np.ndarray]:
    """Our MSPFN's weights under the official TF names and layouts (the converter's table, inverted)."""
    cfg = model.derain_config  # type: ignore[attr-defined]
    units = cfg.get("units", len(model.units))
    rcabs = [len(getattr(model.units[0], b).rcabs) for b in ("branch4", "branch2", "branch1")]
    own, modules = model.state_dict(), dict(model.named_modules())
    out = {}
    for ours, (tf, op) in _name_table(scope, unit, units, rcabs).items():
        arr = own[ours].numpy()
        if op == "conv" or isinstance(modules[ours.rsplit(".", 1)[0]], nn.ConvTranspose2d):
            arr = arr.transpose(2, 3, 1, 0)
        elif op == "deconv":
            arr = arr.transpose(2, 3, 0, 1)[::-1, ::-1]
        out[tf] = np.ascontiguousarray(arr)
    return out


def randomized(name: str, **config) -> nn.Module:
    model = build_model(name, **config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def test_full_17_unit_release_structure_is_inferred() -> None:
    """The released checkpoint's structure (17 units, RCABs 1/1/1, 15,823,424 parameters) maps to
    ``mspfn-m17n1`` with no overrides; the 17-unit graph itself is not in the oracle (too large)."""
    model = randomized("mspfn-m17n1")
    converted = mspfn_from_tf_variables(to_tf_variables(model), rgb=False)
    assert (converted.name, converted.config) == ("mspfn-m17n1", {})
    assert converted.source["graph"].startswith("model/TEST_MSPFN_M17N1.py")
    for (k, a), (_, b) in zip(model.state_dict().items(), converted.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(("scope", "unit", "graph"), [("model", "URAB", "model/MSPFN.py"),
                                                      ("generator", "URAB", "model/TEST_MSPFN.py")])
def test_other_namings_and_widths(scope: str, unit: str, graph: str) -> None:
    config = {"units": 3, "rcabs": [1, 2, 3], "channels": 16, "cfm_channels": 8, "lstm_channels": [8, 16, 24],
              "recon_channels": 8}
    model = randomized("mspfn", **config)
    converted = mspfn_from_tf_variables(to_tf_variables(model, scope, unit))
    assert converted.name == "mspfn" and converted.source["graph"].startswith(graph)
    assert converted.config == config
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():  # RGB conversion of a BGR-trained net: same function with channels reversed
        torch.testing.assert_close(converted.model(x), model(x.flip(1)).flip(1), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny_tf() -> dict[str, np.ndarray]:
    return to_tf_variables(randomized("mspfn-m17n1", units=2, channels=8, cfm_channels=4, lstm_channels=[4, 4, 8],
                                      recon_channels=4))


def test_missing_unexpected_and_misshaped_are_listed(tiny_tf: dict[str, np.ndarray]) -> None:
    bad = dict(tiny_tf)
    del bad["generator/BCM2_1/upBCM4_2_1/alpha"]
    bad["generator/BCM_0/extra/weight"] = np.zeros(3, np.float32)
    bad["generator/rnn5/alpha"] = np.zeros(5, np.float32)
    with pytest.raises(ConversionError) as err:
        mspfn_from_tf_variables(bad)
    msg = str(err.value)
    assert "missing (1): generator/BCM2_1/upBCM4_2_1/alpha" in msg
    assert "unexpected (1): generator/BCM_0/extra/weight" in msg
    assert "mis-shaped (1): generator/rnn5/alpha (5,) for rec_mix.1.weight (4,)" in msg


def test_not_mspfn_and_mixed_scopes(tiny_tf: dict[str, np.ndarray]) -> None:
    with pytest.raises(ConversionError, match="not an MSPFN checkpoint: no net/rnn1/weight"):
        mspfn_from_tf_variables({"net/conv1/weight": np.zeros((3, 3, 3, 8), np.float32)})
    with pytest.raises(ConversionError, match="several top-level scopes"):
        mspfn_from_tf_variables({**tiny_tf, "discriminator/w": np.zeros(1, np.float32)})
    with pytest.raises(ConversionError, match="only optimizer slots"):
        mspfn_from_tf_variables({"global_step": np.int64(1)})


def test_saved_folder_loads_everywhere_a_checkpoint_does(tiny_tf: dict[str, np.ndarray], tmp_path: Path) -> None:
    converted = mspfn_from_tf_variables(tiny_tf)
    folder = save_converted(converted, tmp_path / "ckpt")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["name"] == "mspfn-m17n1" and meta["config"]["units"] == 2
    assert meta["converted_from"]["channel_order"] == "RGB"
    model = load_derainer(folder)
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), converted.model(x), atol=0, rtol=0)


def test_npz_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="variables file not found"):
        convert_mspfn(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ConversionError, match="not a readable .npz"):
        convert_mspfn(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="neither a variables .npz nor a TF checkpoint"):
        convert_mspfn(tmp_path / "epoch44")


def test_converted_folder_initialises_training(tiny_tf: dict[str, np.ndarray], tmp_path: Path) -> None:
    """model.init=DIR with the architecture model.json names: training starts from the converted weights."""
    from derain.checkpoint import read_state_dict
    from derain.config import load_config
    from derain.train import TrainConfig, train

    folder = save_converted(mspfn_from_tf_variables(tiny_tf), tmp_path / "ckpt")
    meta = json.loads((folder / "model.json").read_text())
    opts = json.dumps(meta["config"])
    cfg = load_config(TrainConfig, None, [
        f"out={tmp_path}", "name=ft", "iters=1", "batch_size=1", "patch_size=16", "device=cpu", "log_every=1",
        "train.clean=skimage", "train.limit=1", f"model.name={meta['name']}", f"model.options={opts}",
        f"model.init={folder}", "optim.lr=1e-12", "optim.min_lr=0"])
    train(cfg, progress=False)
    start, after = read_state_dict(folder), read_state_dict(tmp_path / "ft" / "last")
    for k in start:  # one step at lr 1e-12 (Adam moves each weight by at most ~lr): still the converted weights
        torch.testing.assert_close(after[k], start[k], atol=1e-9, rtol=0, msg=k)
