"""Restoration metrics as the deraining papers report them: PSNR and SSIM on MATLAB's Y channel.

Protocol (DESIGN.md §3): images are quantized to uint8 first (what a saved PNG holds); Y is MATLAB's
``rgb2ycbcr`` luma (BT.601 studio range, 16..235, rounded to integers as MATLAB does for uint8 output);
PSNR uses peak 255; SSIM is Wang et al.'s original (11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03,
L = 255, 'valid' region, mean of the map). No border crop unless asked. The RGB variants use the uint8 RGB
values (0..255); RGB SSIM is the mean of the per-channel SSIMs.

Everything runs in float64 torch, batched, on whatever device the inputs live on. Inputs are
``B×3×H×W`` (or ``3×H×W``) tensors, float in [0, 1] or uint8 in [0, 255]; results have the leading
shape (``B``, or a 0-d tensor for an unbatched image), float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

__all__ = [
    "PSNR",
    "SSIM",
    "MetricAccumulator",
    "compute_metrics",
    "psnr",
    "quantize",
    "rgb_to_y",
    "ssim",
]

# MATLAB rgb2ycbcr, first row of the BT.601 matrix scaled for 0..255 inputs, plus the 16 offset.
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_K1, _K2, _PEAK = 0.01, 0.03, 255.0


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] -> float64 uint8 values 0..255 (round, clip); uint8 input is just cast.

    Rounding is half-to-even, like ``derain.imageio.quantize_uint8`` (the quantization of a saved PNG).
    """
    if img.dtype == torch.uint8:
        return img.to(torch.float64)
    if not img.is_floating_point():
        raise TypeError(f"expected a float tensor in [0, 1] or uint8, got dtype {img.dtype}")
    return torch.round(img.to(torch.float64) * 255.0).clamp_(0.0, 255.0)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """MATLAB ``rgb2ycbcr`` Y of ``B×3×H×W`` / ``3×H×W`` RGB (float [0, 1] or uint8) -> ``B×1×H×W`` / ``1×H×W``.

    Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on uint8 R, G, B, rounded half away from zero
    (MATLAB's uint8 output); float64 values in [16, 235] (0..255 units).
    """
    _check_rgb(img, "img")
    rgb = quantize(img)
    w = torch.tensor(_Y_WEIGHTS, dtype=torch.float64, device=rgb.device).view(3, 1, 1)
    y = 16.0 + (rgb * w).sum(dim=-3, keepdim=True) / 255.0
    return torch.floor(y + 0.5)


def psnr(
    pred: torch.Tensor, target: torch.Tensor, crop_border: int = 0, test_y_channel: bool = True
) -> torch.Tensor:
    """Per-image PSNR in dB (peak 255) of ``B×3×H×W`` / ``3×H×W`` images -> shape ``B`` / ``()``, float64.

    On MATLAB Y when ``test_y_channel`` (the papers' protocol), else on the uint8 RGB values.
    Identical images give ``inf``.
    """
    x, y = _prepare(pred, target, crop_border, test_y_channel)
    mse = (x - y).pow(2).mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(_PEAK**2 / mse)


def ssim(
    pred: torch.Tensor, target: torch.Tensor, crop_border: int = 0, test_y_channel: bool = True
) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of ``B×3×H×W`` / ``3×H×W`` images -> shape ``B`` / ``()``, float64.

    11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, L = 255, 'valid' region (no padding), mean of
    the map; on MATLAB Y when ``test_y_channel``, else the mean of the per-channel SSIMs of uint8 RGB.
    Images need H, W >= 11 after cropping.
    """
    x, y = _prepare(pred, target, crop_border, test_y_channel)
    if x.shape[-1] < _SSIM_WINDOW or x.shape[-2] < _SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WINDOW}×{_SSIM_WINDOW}, got {tuple(x.shape)}")
    lead = x.shape[:-3]
    c, h, w = x.shape[-3:]
    x = x.reshape(-1, 1, h, w)
    y = y.reshape(-1, 1, h, w)
    smap = _ssim_map(x, y)  # (N·C)×h'×w'
    per_channel = smap.mean(dim=(-2, -1)).reshape(*lead, c)
    return per_channel.mean(dim=-1)


def compute_metrics(pred: torch.Tensor, target: torch.Tensor, crop_border: int = 0) -> dict[str, torch.Tensor]:
    """All four numbers at once: ``psnr_y``, ``ssim_y``, ``psnr_rgb``, ``ssim_rgb`` (per image, float64)."""
    return {
        "psnr_y": psnr(pred, target, crop_border, test_y_channel=True),
        "ssim_y": ssim(pred, target, crop_border, test_y_channel=True),
        "psnr_rgb": psnr(pred, target, crop_border, test_y_channel=False),
        "ssim_rgb": ssim(pred, target, crop_border, test_y_channel=False),
    }


class PSNR:
    """mmagic-style metric object: ``PSNR(crop_border=0, convert_to='Y')(pred, target)`` -> per-image dB."""

    def __init__(self, crop_border: int = 0, convert_to: str | None = "Y") -> None:
        self.crop_border = crop_border
        self.test_y_channel = _parse_convert_to(convert_to)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return psnr(pred, target, self.crop_border, self.test_y_channel)

    def __repr__(self) -> str:
        convert_to = "Y" if self.test_y_channel else None
        return f"{type(self).__name__}(crop_border={self.crop_border}, convert_to={convert_to!r})"


class SSIM(PSNR):
    """mmagic-style metric object: ``SSIM(crop_border=0, convert_to='Y')(pred, target)`` -> per-image SSIM."""

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ssim(pred, target, self.crop_border, self.test_y_channel)


class MetricAccumulator:
    """Running per-image values and means of named metrics (validation during training, the benchmark).

    ``update({"psnr_y": tensor_B, ...}, names=[...])`` adds a batch; ``means()`` gives ``{metric: mean}``
    over every image added so far; ``rows()`` the per-image values (kept unless ``keep_values=False``).
    """

    def __init__(self, keep_values: bool = True) -> None:
        self.keep_values = keep_values
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._values: dict[str, list[float]] = {}
        self._names: list[str] = []

    def update(self, values: Mapping[str, torch.Tensor | float | Iterable[float]],
               names: Iterable[str] | None = None) -> None:
        """Add one batch of per-image values (tensor of shape ``B``, a list, or a single float) per metric."""
        n_batch = None
        for key, val in values.items():
            flat = _as_floats(val)
            if n_batch is not None and len(flat) != n_batch:
                raise ValueError(f"metric {key!r} has {len(flat)} values, others have {n_batch}")
            n_batch = len(flat)
            self._sums[key] = self._sums.get(key, 0.0) + math.fsum(flat)
            self._counts[key] = self._counts.get(key, 0) + len(flat)
            if self.keep_values:
                self._values.setdefault(key, []).extend(flat)
        if self.keep_values and n_batch is not None:
            names = list(names) if names is not None else [str(len(self._names) + i) for i in range(n_batch)]
            if len(names) != n_batch:
                raise ValueError(f"{len(names)} names for {n_batch} values")
            self._names.extend(names)

    @property
    def count(self) -> int:
        """Number of images added (of the most-updated metric)."""
        return max(self._counts.values(), default=0)

    def means(self) -> dict[str, float]:
        """``{metric: mean over the images added}`` (NaN for none; ``inf`` if an image scored ``inf``)."""
        return {k: self._sums[k] / self._counts[k] if self._counts[k] else math.nan for k in self._sums}

    def rows(self) -> list[dict[str, float | str]]:
        """Per-image values as ``[{"name": ..., metric: value, ...}, ...]`` in the order added."""
        if not self.keep_values:
            raise RuntimeError("per-image values were not kept (keep_values=False)")
        return [
            {"name": name, **{k: v[i] for k, v in self._values.items() if i < len(v)}}
            for i, name in enumerate(self._names)
        ]

    def reset(self) -> None:
        """Forget everything added."""
        self._sums.clear()
        self._counts.clear()
        self._values.clear()
        self._names.clear()


# ----------------------------------------------------------------------------------------------- helpers


def _check_rgb(img: torch.Tensor, what: str) -> None:
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor (B×3×H×W or 3×H×W), got {type(img).__name__}")
    if img.ndim not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(f"{what}: expected a B×3×H×W or 3×H×W RGB tensor, got shape {tuple(img.shape)}")


def _prepare(
    pred: torch.Tensor, target: torch.Tensor, crop_border: int, test_y_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape checks, uint8 quantization / Y conversion and border crop -> two float64 tensors (0..255)."""
    _check_rgb(pred, "pred")
    _check_rgb(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    h, w = pred.shape[-2:]
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}×{w} image")
    convert = rgb_to_y if test_y_channel else quantize
    x, y = convert(pred), convert(target.to(pred.device))
    if crop_border:
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    return x, y


def _gaussian_taps() -> list[float]:
    """The normalized 11-tap Gaussian (σ = 1.5); its outer product is MATLAB's fspecial('gaussian', 11, 1.5)."""
    half = (_SSIM_WINDOW - 1) / 2
    g = [math.exp(-((k - half) ** 2) / (2 * _SSIM_SIGMA**2)) for k in range(_SSIM_WINDOW)]
    total = math.fsum(g)
    return [v / total for v in g]


def _filter_valid(x: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Separable Gaussian filter over the last two dims, 'valid' region: ``...×H×W`` -> ``...×(H-10)×(W-10)``.

    Shifted-slice multiply-adds: in float64 on CPU this is ~6× faster than ``conv2d`` (no fast double conv).
    """
    n = len(taps)
    for dim in (-2, -1):
        size = x.shape[dim] - n + 1
        acc = x.narrow(dim, 0, size) * taps[0]
        for k in range(1, n):
            acc.add_(x.narrow(dim, k, size), alpha=taps[k])
        x = acc
    return x


def _ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Wang et al.'s SSIM map of two ``N×1×H×W`` float64 tensors in 0..255 units -> ``N×H'×W'`` ('valid')."""
    c1, c2 = (_K1 * _PEAK) ** 2, (_K2 * _PEAK) ** 2
    mu_x, mu_y, xx, yy, xy = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), _gaussian_taps()).unbind(1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x, var_y, cov = xx - mu_xx, yy - mu_yy, xy - mu_xy
    num = (2 * mu_xy + c1) * (2 * cov + c2)
    den = (mu_xx + mu_yy + c1) * (var_x + var_y + c2)
    return num / den


def _parse_convert_to(convert_to: str | None) -> bool:
    if convert_to is None or str(convert_to).upper() == "RGB":
        return False
    if str(convert_to).upper() == "Y":
        return True
    raise ValueError(f"convert_to must be 'Y', 'RGB' or None, got {convert_to!r}")


def _as_floats(val: torch.Tensor | float | Iterable[float]) -> list[float]:
    if isinstance(val, torch.Tensor):
        return [float(v) for v in val.detach().reshape(-1).cpu().tolist()]
    if isinstance(val, (int, float)):
        return [float(val)]
    return [float(v) for v in val]
