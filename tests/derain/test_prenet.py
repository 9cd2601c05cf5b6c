"""PReNet: architecture, the authors' released checkpoint, and its Rain100L quality."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from derain.checkpoint import CheckpointError, load_derainer, load_weights
from derain.imageio import read_tensor
from derain.inference import derain_tensor
from derain.models.prenet import PReNet
from derain.registry import build_model, list_models

WEIGHTS = "weights/PReNet_Rain100L_PReNet6.pth"
OFFICIAL_PARAMS = 168_963


def _small(**kw: object) -> PReNet:
    """A narrow random-init PReNet (fast on CPU)."""
    return build_model("prenet", **{"channels": 8, "stages": 3, **kw}).eval()


def test_registered_with_official_parameter_count() -> None:
    assert "prenet" in list_models()
    model = build_model("prenet")
    assert isinstance(model, PReNet)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    assert model.receptive_radius == 78  # 13 convs per stage × 6 stages


@pytest.mark.parametrize("size", [(37, 53), (1, 1), (64, 17)])
def test_any_size_and_value_range(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size)
    model = _small()
    with torch.inference_mode():
        y = model(x)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1


def test_fused_gates_match_literal_computation() -> None:
    model = _small()
    x = torch.rand(1, 3, 21, 30)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), model.forward_reference(x), atol=1e-6, rtol=1e-5)
        stages = model.forward_stages(x)
    assert len(stages) == 3


def test_clamped_only_in_eval_mode() -> None:
    model = _small()
    with torch.no_grad():
        model.conv[0].bias.fill_(5.0)  # push the output far above 1
    x = torch.rand(1, 3, 16, 16)
    assert model.train()(x).max() > 1.0
    assert model.eval()(x).max() <= 1.0


def test_prn_variant_without_lstm() -> None:
    model = build_model("prenet", recurrent=False, channels=8)
    assert not any(k.startswith("conv_i") for k in model.state_dict())
    assert model.eval()(torch.rand(1, 3, 9, 11)).shape == (1, 3, 9, 11)


def test_wrong_architecture_names_keys(tmp_path: Path) -> None:
    prn = tmp_path / "prn.pth"
    torch.save(build_model("prenet", recurrent=False).state_dict(), prn)
    with pytest.raises(CheckpointError, match=r"missing keys \(8\): conv_f\.0\.bias"):
        load_derainer("prenet", weights=prn)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(8\): conv_f\.0\.bias"):
        load_weights(build_model("prenet", recurrent=False), _full_state(tmp_path))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights(build_model("prenet", channels=16), _full_state(tmp_path))


def _full_state(tmp_path: Path) -> Path:
    path = tmp_path / "full.pth"
    torch.save(build_model("prenet").state_dict(), path)
    return path


def test_official_checkpoint_loads(shared_data: Path) -> None:
    path = shared_data / WEIGHTS
    model = load_derainer("prenet", weights=path)
    assert not model.training
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert sum(v.numel() for v in state.values()) == OFFICIAL_PARAMS
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    other = load_weights(build_model("prenet"), path)
    torch.testing.assert_close(other.conv_i[0].weight, state["conv_i.0.weight"], rtol=0, atol=0)


@pytest.mark.slow
def test_rain100l_first_10_y_psnr(shared_data: Path) -> None:
    """Paper: 37.48 dB on all 100; measured here on pairs 1..10: 37.69 dB."""
    model = load_derainer("prenet", weights=shared_data / WEIGHTS)
    scores = []
    for n in range(1, 11):
        rainy = read_tensor(shared_data / "Rain100L" / "input" / f"{n}.png")[None]
        clean = read_tensor(shared_data / "Rain100L" / "target" / f"{n}.png")[None]
        derained = derain_tensor(model, rainy, channels_last=True)
        scores.append(_y_psnr(derained, clean))
    mean = sum(scores) / len(scores)
    assert mean >= 37.0, f"mean Y-PSNR {mean:.3f} dB on Rain100L 1..10 ({[round(s, 2) for s in scores]})"


def _y_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Y-PSNR (MATLAB rgb2ycbcr of uint8-rounded images, peak 255, no crop) via derain.metrics."""
    from derain.metrics import psnr

    return float(psnr(pred, target, crop_border=0, test_y_channel=True)[0])
