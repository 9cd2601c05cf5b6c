"""derain.metrics against an independent computation (scikit-image + a numpy MATLAB-Y formula) on real photos."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from derain.imageio import read_tensor
from derain.metrics import PSNR, SSIM, MetricAccumulator, compute_metrics, psnr, rgb_to_y, ssim


def matlab_y(rgb_u8: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr Y of an H×W×3 uint8 image as float64, rounded like MATLAB's uint8 output."""
    r, g, b = (rgb_u8[..., i].astype(np.float64) for i in range(3))
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    return np.floor(y + 0.5)


def sk_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return peak_signal_noise_ratio(a, b, data_range=255)


def sk_ssim(a: np.ndarray, b: np.ndarray, channel_axis: int | None = None) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, channel_axis=channel_axis)


def as_tensor(u8: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 -> 3×H×W float32 in [0, 1] (what derain.imageio gives)."""
    return torch.from_numpy(u8).permute(2, 0, 1).float() / 255.0


def degrade(u8: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = u8.astype(np.float64)
    if kind == "noise":
        x = x + rng.normal(0.0, 12.0, x.shape)
    elif kind == "blur":
        x = gaussian_filter(x, sigma=(1.5, 1.5, 0))
    else:  # streaks: bright vertical lines, a crude rain
        x = x.copy()
        x[:, rng.integers(0, x.shape[1], x.shape[1] // 8)] += 60.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea}


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: fn() for name, fn in PHOTOS.items()}


@pytest.mark.parametrize("name,kind", [("astronaut", "noise"), ("coffee", "blur"), ("chelsea", "streaks")])
def test_matches_skimage_on_photos(photos: dict[str, np.ndarray], name: str, kind: str) -> None:
    clean = photos[name]
    rainy = degrade(clean, kind)
    got = {k: float(v) for k, v in compute_metrics(as_tensor(rainy), as_tensor(clean)).items()}
    yc, yr = matlab_y(clean), matlab_y(rainy)
    assert got["psnr_y"] == pytest.approx(sk_psnr(yc, yr), abs=1e-6)
    assert got["ssim_y"] == pytest.approx(sk_ssim(yc, yr), abs=1e-6)
    assert got["psnr_rgb"] == pytest.approx(sk_psnr(clean.astype(float), rainy.astype(float)), abs=1e-6)
    assert got["ssim_rgb"] == pytest.approx(sk_ssim(clean.astype(float), rainy.astype(float), 2), abs=1e-6)
    assert 5 < got["psnr_y"] < 60 and 0 < got["ssim_y"] < 1


def test_rgb_to_y_is_matlab(photos: dict[str, np.ndarray]) -> None:
    img = photos["coffee"]
    y = rgb_to_y(as_tensor(img))
    assert y.shape == (1, *img.shape[:2]) and y.dtype == torch.float64
    np.testing.assert_array_equal(y[0].numpy(), matlab_y(img))
    # uint8 tensors give the same; batched input keeps the batch dimension
    u8 = torch.from_numpy(img).permute(2, 0, 1)
    assert torch.equal(rgb_to_y(u8), y)
    assert rgb_to_y(as_tensor(img)[None]).shape == (1, 1, *img.shape[:2])
    corners = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]]).view(3, 1, 4)
    assert rgb_to_y(corners).flatten().tolist() == [16.0, 235.0, 81.0, 41.0]  # black, white, red, blue


def test_quantizes_floats_first() -> None:
    """Values off the uint8 grid are rounded to it before anything else (what a saved PNG would hold)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, 50, generator=g)
    b = torch.rand(3, 40, 50, generator=g)
    a_q, b_q = torch.round(a * 255) / 255, torch.round(b * 255) / 255
    assert torch.equal(psnr(a, b), psnr(a_q, b_q))
    assert torch.equal(ssim(a, b, test_y_channel=False), ssim(a_q, b_q, test_y_channel=False))
    # out-of-range values are clipped to 0..255
    assert torch.equal(psnr(a * 3 - 1, b), psnr((a * 3 - 1).clamp(0, 1), b))


def test_identical_images(photos: dict[str, np.ndarray]) -> None:
    x = as_tensor(photos["chelsea"])
    for y_channel in (True, False):
        assert math.isinf(float(psnr(x, x, test_y_channel=y_channel)))
        assert float(ssim(x, x, test_y_channel=y_channel)) == 1.0


def test_crop_border(photos: dict[str, np.ndarray]) -> None:
    clean = photos["astronaut"]
    rainy = degrade(clean, "noise", seed=3)
    c = 4
    yc, yr = matlab_y(clean)[c:-c, c:-c], matlab_y(rainy)[c:-c, c:-c]
    assert float(psnr(as_tensor(rainy), as_tensor(clean), crop_border=c)) == pytest.approx(sk_psnr(yc, yr), abs=1e-6)
    assert float(ssim(as_tensor(rainy), as_tensor(clean), crop_border=c)) == pytest.approx(sk_ssim(yc, yr), abs=1e-6)
    # a difference only inside the border is invisible with the crop
    x = as_tensor(clean)
    y = x.clone()
    y[:, :c] = 1 - y[:, :c]
    assert math.isinf(float(psnr(y, x, crop_border=c)))
    assert not math.isinf(float(psnr(y, x, crop_border=0)))
    with pytest.raises(ValueError, match="crop_border"):
        psnr(x, y, crop_border=-1)


@pytest.mark.parametrize("h,w", [(11, 11), (37, 53), (64, 17)])
def test_odd_sizes(h: int, w: int) -> None:
    rng = np.random.default_rng(h * w)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    ya, yb = matlab_y(a), matlab_y(b)
    assert float(psnr(as_tensor(b), as_tensor(a))) == pytest.approx(sk_psnr(ya, yb), abs=1e-6)
    assert float(ssim(as_tensor(b), as_tensor(a))) == pytest.approx(sk_ssim(ya, yb), abs=1e-6)


def test_batch_gives_per_image_values(photos: dict[str, np.ndarray]) -> None:
    clean = photos["astronaut"][:256, :320]
    xs = torch.stack([as_tensor(degrade(clean, "noise", 1)), as_tensor(degrade(clean, "blur"))])
    ys = as_tensor(clean).expand(2, -1, -1, -1)
    for fn in (psnr, ssim):
        batched = fn(xs, ys)
        assert batched.shape == (2,) and batched.dtype == torch.float64
        singles = torch.stack([fn(xs[i], ys[i]) for i in range(2)])
        assert torch.allclose(batched, singles, rtol=0, atol=1e-12)
        assert batched[0] != batched[1]
    assert psnr(xs[0], ys[0]).shape == ()


def test_errors() -> None:
    a, b = torch.zeros(1, 3, 20, 30), torch.zeros(1, 3, 30, 20)
    with pytest.raises(ValueError, match=r"\(1, 3, 20, 30\).*\(1, 3, 30, 20\)"):
        psnr(a, b)
    with pytest.raises(ValueError, match=r"\(1, 3, 20, 30\).*\(1, 3, 30, 20\)"):
        ssim(a, b)
    with pytest.raises(ValueError, match="3×H×W"):
        psnr(torch.zeros(1, 20, 30), torch.zeros(1, 20, 30))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(3, 10, 30), torch.zeros(3, 10, 30))


def test_metric_objects_and_accumulator(photos: dict[str, np.ndarray]) -> None:
    clean = as_tensor(photos["coffee"][:128, :160])
    rainy = as_tensor(degrade(photos["coffee"][:128, :160], "noise"))
    assert torch.equal(PSNR()(rainy, clean), psnr(rainy, clean))
    assert torch.equal(PSNR(crop_border=2, convert_to=None)(rainy, clean),
                       psnr(rainy, clean, crop_border=2, test_y_channel=False))
    assert torch.equal(SSIM(convert_to="RGB")(rainy, clean), ssim(rainy, clean, test_y_channel=False))
    assert "convert_to='Y'" in repr(SSIM()) and repr(SSIM()).startswith("SSIM(")
    with pytest.raises(ValueError, match="convert_to"):
        PSNR(convert_to="Lab")

    acc = MetricAccumulator()
    acc.update({"psnr_y": torch.tensor([20.0, 30.0]), "ssim_y": torch.tensor([0.5, 0.7])}, names=["a", "b"])
    acc.update({"psnr_y": 40.0, "ssim_y": 0.9}, names=["c"])
    assert acc.count == 3
    assert acc.means() == pytest.approx({"psnr_y": 30.0, "ssim_y": 0.7})
    assert acc.rows()[2] == {"name": "c", "psnr_y": 40.0, "ssim_y": 0.9}
    with pytest.raises(ValueError, match="values"):
        acc.update({"psnr_y": [1.0, 2.0], "ssim_y": [1.0]})
    acc.reset()
    assert acc.count == 0 and acc.means() == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(photos: dict[str, np.ndarray]) -> None:
    clean = as_tensor(photos["chelsea"])[None]
    rainy = as_tensor(degrade(photos["chelsea"], "streaks"))[None]
    cpu = compute_metrics(rainy, clean)
    gpu = compute_metrics(rainy.cuda(), clean.cuda())
    for k, v in cpu.items():
        assert gpu[k].device.type == "cuda"
        assert float(gpu[k]) == pytest.approx(float(v), abs=1e-9)


def test_rain100l_known_number(shared_data) -> None:
    """The rainy input of the 100 Rain100L pairs vs clean: 26.900 dB / 0.8383 (DESIGN.md, data README)."""
    root = shared_data / "Rain100L"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is fastest on a shared CPU
    try:
        ps, ss = [], []
        for i in range(1, 101):
            x = read_tensor(root / "input" / f"{i}.png")
            y = read_tensor(root / "target" / f"{i}.png")
            ps.append(float(psnr(x, y)))
            ss.append(float(ssim(x, y)))
    finally:
        torch.set_num_threads(threads)
    assert len(ps) == 100
    assert np.mean(ps) == pytest.approx(26.900, abs=5e-4)
    assert np.mean(ss) == pytest.approx(0.8383, abs=5e-5)
