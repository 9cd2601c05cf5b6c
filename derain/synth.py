"""Seeded rain synthesis: Photoshop-style streak layers plus, optionally, a haze (accumulation) veil.

Streak layer (the recipe behind Rain1400/Rain800/Rain12 and Rain100L/H): sparse noise (random drop positions with
random intensities) → drop size (the noise "upscale", done as a tent footprint of width ``drop_size`` px) → motion
blur along an anti-aliased line of length L at angle θ → levels (black/white point, gamma) → blend (screen or
additive) with opacity; several layers may differ in θ/L. Haze is a separate axis (RainCityscapes' β, Hu et al.
CVPR'19): the veil ``I = T·(B + S) + (1 − T)·A`` with ``T = exp(−β·d)``, ``d`` a pseudo-depth (far at the top,
plus low-frequency noise) and ``A`` the atmospheric light in [0.25, 0.95]; ``veil_beta = (0, 0)`` means none.

Presets are versioned (``heavy@v1`` = derainbench 0.2.0's heavy, byte-identical; ``heavy`` = the newest); the
calibrated ``rain100l``/``rain100h`` (= ``light``/``heavy`` v2) were fitted to the real Rain100L/Rain100H pairs
and checked on held-out pairs with the authors' PReNet (``derainbench realism``, bench/RESULTS.md).

Scale: streak geometry (``drop_size``, ``length_range``) and ``density`` are in pixels of a *canvas* whose
shorter side is ``reference_size`` (320 px, the short side of Rain100L/H images), so rain looks the same
relative to the picture at any resolution; the canvas is drawn and then resized to the image.
``reference_size=0`` draws directly in image pixels.

Determinism: the rain depends only on (seed, image height/width, parameters), never on pixel values, so a
labelled dataset's rain is reproducible; ``np.random.default_rng(seed)`` is the only source of randomness.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, signal
from skimage.transform import resize
from tqdm import tqdm

from derain.config import ConfigError, from_dict, to_dict
from derain.fileio import atomic_write_text, to_jsonable
from derain.imageio import is_image_file, read_image, walk_files, write_image

BLEND_MODES = ("screen", "add")
SIDECAR_SUFFIX = ".rain.json"
MIN_SIDE = 8
# Bounds on the knobs that set how much work or memory one image takes (issue 27: `layers=100000` ran for hours,
# `drop_size=1e6` and `reference_size=2e5` asked numpy for terabytes): each is far above every preset (layers <= 3,
# drop_size <= 2.5 px, lengths <= 90 px, reference 320 px, beta <= 1.25); every float must be finite.
LIMITS: dict[str, float] = {"reference_size": 4096, "layers": 16, "drop_size": 64.0, "length_range": 1024.0,
                            "drop_intensity": 10.0, "levels_gamma": 100.0, "veil_beta": 50.0}
_RANGE_FIELDS = ("density", "drop_intensity", "length_range", "angle_range", "veil_beta", "atmospheric_light")


@dataclass(frozen=True)
class RainParams:
    """Every knob of the synthesizer. ``(lo, hi)`` ranges are sampled uniformly per image or per layer.

    Lengths, drop sizes and densities are in canvas pixels (see module docstring); angles in degrees from
    vertical, positive = falling towards the right; intensities on the [0, 1] image scale.
    """

    name: str = "custom"  # preset name, recorded in the sidecar
    reference_size: int = 320  # shorter side of the drawing canvas in px; 0 = draw in image pixels
    layers: int = 1  # number of streak layers
    density: tuple[float, float] = (0.004, 0.004)  # drops per canvas pixel, per layer
    drop_size: float = 1.0  # drop width in canvas px (the Photoshop "upscale" of the noise layer)
    drop_intensity: tuple[float, float] = (0.3, 1.0)  # per-drop noise amplitude before levels
    length_range: tuple[float, float] = (15.0, 35.0)  # motion-blur length L, per layer
    angle_range: tuple[float, float] = (-20.0, 20.0)  # base angle θ, once per image
    angle_jitter: float = 0.0  # each layer's θ deviates from the base by up to ± this
    taper: float = 0.3  # fraction of half the streak over which its ends fade out (0 = hard ends)
    levels_black: float = 0.1  # levels: streak values below this vanish
    levels_white: float = 0.9  # levels: values above this saturate to 1
    levels_gamma: float = 1.0  # levels: midtone exponent applied after black/white
    opacity: float = 0.8  # streak layer opacity in the blend
    blend: str = "screen"  # "screen" or "add"
    veil_beta: tuple[float, float] = (0.0, 0.0)  # veil extinction β; (0, 0) = no veil
    atmospheric_light: tuple[float, float] = (0.75, 0.9)  # veil colour A (gray), within [0.25, 0.95]
    depth_noise: float = 0.35  # weight of low-frequency noise in the pseudo-depth (0 = pure vertical ramp)

    def __post_init__(self) -> None:
        for key in _RANGE_FIELDS:
            value = getattr(self, key)
            if isinstance(value, (int, float)):
                value = (float(value), float(value))
            value = tuple(float(v) for v in value)
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"rain parameter {key} must be a (low, high) pair with low <= high, got {value}")
            object.__setattr__(self, key, value)
        self._check()

    def _check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not np.isfinite(v) for v in values):
                raise ValueError(f"bad rain parameters ({self.name}): {f.name} must be finite, got {value}")
        checks = [
            (0 <= self.reference_size <= LIMITS["reference_size"],
             f"reference_size must lie in [0, {LIMITS['reference_size']}] px (0 = image pixels)"),
            (0 <= self.layers <= LIMITS["layers"], f"layers must lie in [0, {LIMITS['layers']}]"),
            (0.0 <= self.density[0] and self.density[1] <= 1.0, "density must lie in [0, 1]"),
            (1.0 <= self.drop_size <= LIMITS["drop_size"], f"drop_size must lie in [1, {LIMITS['drop_size']}] px"),
            (0.0 <= self.drop_intensity[0] and self.drop_intensity[1] <= LIMITS["drop_intensity"],
             f"drop_intensity must lie in [0, {LIMITS['drop_intensity']}]"),
            (1.0 <= self.length_range[0] and self.length_range[1] <= LIMITS["length_range"],
             f"length_range must lie in [1, {LIMITS['length_range']}] px"),
            (-90.0 <= self.angle_range[0] and self.angle_range[1] <= 90.0, "angle_range must lie in [-90, 90]"),
            (0.0 <= self.angle_jitter <= 180.0, "angle_jitter must lie in [0, 180] degrees"),
            (0.0 <= self.taper <= 1.0, "taper must lie in [0, 1]"),
            (0.0 <= self.levels_black < self.levels_white, "need 0 <= levels_black < levels_white"),
            (0.0 < self.levels_gamma <= LIMITS["levels_gamma"],
             f"levels_gamma must lie in (0, {LIMITS['levels_gamma']}]"),
            (0.0 <= self.opacity <= 1.0, "opacity must lie in [0, 1]"),
            (self.blend in BLEND_MODES, f"blend must be one of {', '.join(BLEND_MODES)}"),
            (0.0 <= self.veil_beta[0] and self.veil_beta[1] <= LIMITS["veil_beta"],
             f"veil_beta must lie in [0, {LIMITS['veil_beta']}]"),
            (0.25 <= self.atmospheric_light[0] and self.atmospheric_light[1] <= 0.95,
             "atmospheric_light must lie in [0.25, 0.95]"),
            (0.0 <= self.depth_noise <= 1.0, "depth_noise must lie in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"bad rain parameters ({self.name}): {message}")


# ------------------------------------------------------------------------------------------------------ presets
#
# Presets are versioned: every preset exists under a name ``NAME@vN`` that always produces the same rain (byte for
# byte, for a seed and image size), and the bare ``NAME`` is an alias of its newest version. A preset's ``name``
# field is the versioned name, so sidecars (``"preset": "heavy@v2"``) and the bench's cell fingerprints record
# the version. v1 is the rain of derainbench <= 0.2.0; v2 (the calibrated family) was fitted to the real Rain100L
# and Rain100H pairs and measured with the authors' PReNet (``derainbench realism``, bench/RESULTS.md "Rain
# realism"). Haze is its own axis: ``veil_beta`` (the extinction β of the veil ``I = T·I + (1 − T)·A``,
# ``T = exp(−β·d)``; (0, 0) = no haze) is zero in every v2 streak preset; ``heavy-haze`` adds it on purpose.

PRESETS: dict[str, RainParams] = {}
LATEST: dict[str, str] = {}  # bare name -> its newest versioned name


def _register(params: RainParams) -> RainParams:
    """Add a versioned preset (``params.name`` = ``NAME@vN``) and point the bare ``NAME`` at its newest version."""
    bare, _, version = params.name.partition("@v")
    if not version.isdigit() or params.name in PRESETS:
        raise ValueError(f"preset name must be a new NAME@vN, got {params.name!r}")
    PRESETS[params.name] = params
    if bare not in LATEST or int(version) > int(LATEST[bare].partition("@v")[2]):
        LATEST[bare] = params.name
    return params


# ---- v1: the presets of derainbench <= 0.2.0, kept byte-identical. Measured with the authors' PReNet on held-out
# real pairs (bench/RESULTS.md): light (= 2@v1) is rain a Rain100L model removes (gain ratio 0.93), heavy (= 5@v1)
# is NOT Rain100H (ratio 0.13: screen-blended wide streaks in several directions under a fog veil). medium, heavy
# and levels 3-5 carry haze.
_V1_LIGHT = _register(RainParams(
    name="light@v1", layers=1, density=(0.002, 0.0038), drop_size=1.5, drop_intensity=(0.2, 1.0),
    length_range=(22.0, 45.0), angle_range=(-20.0, 20.0), taper=0.25,
    levels_black=0.08, levels_white=1.0, opacity=0.6, blend="screen",
))
_register(RainParams(
    name="medium@v1", layers=2, density=(0.0015, 0.0025), drop_size=1.8, drop_intensity=(0.2, 1.0),
    length_range=(25.0, 55.0), angle_range=(-20.0, 20.0), angle_jitter=8.0, taper=0.25,
    levels_black=0.08, levels_white=1.0, opacity=0.7, blend="screen",
    veil_beta=(0.2, 0.45), atmospheric_light=(0.7, 0.9),
))
_V1_HEAVY = _register(RainParams(
    name="heavy@v1", layers=3, density=(0.0011, 0.002), drop_size=2.5, drop_intensity=(0.2, 1.0),
    length_range=(30.0, 70.0), angle_range=(-20.0, 20.0), angle_jitter=20.0, taper=0.25,
    levels_black=0.08, levels_white=1.0, opacity=0.75, blend="screen",
    veil_beta=(0.8, 1.25), atmospheric_light=(0.75, 0.95),
))
_register(RainParams(
    name="1@v1", layers=1, density=(0.0016, 0.003), drop_size=1.3, drop_intensity=(0.2, 1.0),
    length_range=(18.0, 40.0), angle_range=(-20.0, 20.0), taper=0.25,
    levels_black=0.08, levels_white=1.0, opacity=0.55, blend="screen",
))
_register(dataclasses.replace(_V1_LIGHT, name="2@v1"))
_register(RainParams(
    name="3@v1", layers=2, density=(0.0014, 0.0024), drop_size=1.8, drop_intensity=(0.2, 1.0),
    length_range=(25.0, 55.0), angle_range=(-20.0, 20.0), angle_jitter=8.0, taper=0.25,
    levels_black=0.08, levels_white=1.0, opacity=0.62, blend="screen",
    veil_beta=(0.05, 0.2), atmospheric_light=(0.7, 0.9),
))
_register(RainParams(
    name="4@v1", layers=3, density=(0.0011, 0.0019), drop_size=2.2, drop_intensity=(0.2, 1.0),
    length_range=(28.0, 62.0), angle_range=(-20.0, 20.0), angle_jitter=15.0, taper=0.25,
    levels_black=0.08, levels_white=1.0, opacity=0.68, blend="screen",
    veil_beta=(0.3, 0.5), atmospheric_light=(0.72, 0.92),
))
_register(dataclasses.replace(_V1_HEAVY, name="5@v1"))

# ---- Calibrated on the real pairs (fitted on Rain100L 1-50 and Rain100H-calib 1-25; held-out figures in
# bench/RESULTS.md). Both real sets are additive: the rain layer is gray (equal in R, G, B) and clips at white,
# hence blend="add" (screen tints it and fades it on bright backgrounds, which the authors' PReNet over-corrects).
RAIN100L = _register(RainParams(
    # one layer of sparse streaks, one direction per image within ±25°
    name="rain100l@v1", layers=1, density=(0.0017, 0.0033), drop_size=2.0, drop_intensity=(0.2, 1.0),
    length_range=(22.0, 45.0), angle_range=(-25.0, 25.0), taper=0.25,
    levels_black=0.08, levels_white=1.0, opacity=0.3, blend="add",
))
RAIN100H = _register(RainParams(
    # three dense layers of thin, long, bright, nearly parallel streaks (base ±10°, layers ±10° off it); no haze
    name="rain100h@v1", layers=3, density=(0.003, 0.005), drop_size=1.5, drop_intensity=(0.3, 1.0),
    length_range=(40.0, 90.0), angle_range=(-10.0, 10.0), angle_jitter=10.0, taper=0.2,
    levels_black=0.08, levels_white=1.0, opacity=0.34, blend="add",
))
# The haze axis on top of Rain100H-like streaks: the old heavy preset's veil (β 0.8-1.25, whitish A). Out of
# distribution for derainers trained on Rain100H by design (measured: bench/RESULTS.md).
_register(dataclasses.replace(RAIN100H, name="heavy-haze@v1", veil_beta=(0.8, 1.25), atmospheric_light=(0.75, 0.95)))

# ---- v2 of the named presets and the ladder: the calibrated family, streaks only (no level carries haze).
_register(dataclasses.replace(RAIN100L, name="light@v2"))
_register(dataclasses.replace(RAIN100H, name="heavy@v2"))
_V2_LADDER = {
    "1": dataclasses.replace(RAIN100L, density=(0.0009, 0.0017), opacity=0.25),
    "2": RAIN100L,
    "3": RainParams(
        layers=2, density=(0.0018, 0.003), drop_size=1.5, drop_intensity=(0.25, 1.0), length_range=(30.0, 70.0),
        angle_range=(-15.0, 15.0), angle_jitter=8.0, taper=0.22, levels_black=0.08, levels_white=1.0, opacity=0.3,
        blend="add",
    ),
    "4": RainParams(
        layers=3, density=(0.002, 0.0034), drop_size=1.5, drop_intensity=(0.3, 1.0), length_range=(35.0, 80.0),
        angle_range=(-12.0, 12.0), angle_jitter=10.0, taper=0.2, levels_black=0.08, levels_white=1.0, opacity=0.3,
        blend="add",
    ),
    "5": RAIN100H,
}
for _level, _params in _V2_LADDER.items():
    _register(dataclasses.replace(_params, name=f"{_level}@v2"))
_register(dataclasses.replace(_V2_LADDER["3"], name="medium@v2"))

# The severity ladder 1-5 (the robustness-benchmark convention: metrics under corruption averaged over levels 1-5,
# Michaelis et al. 2019), monotone in rain amount. v2 (current): 1 is lighter than Rain100L, 2 = light = rain100l,
# 5 = heavy = rain100h, 3 and 4 in between; no level carries haze. v1: 2 = light@v1, 5 = heavy@v1; levels 3-5
# carry haze. Mean Y-PSNR per level on the photos scikit-image ships: ``python bench/rain_ladder.py`` (README).
LADDER: tuple[str, ...] = ("1", "2", "3", "4", "5")

# Bare names (the newest version of each) first, in reading order, then every versioned name.
_BARE_ORDER = ("light", "medium", "heavy", *LADDER, "rain100l", "rain100h", "heavy-haze")
PRESETS = {**{name: PRESETS[LATEST[name]] for name in _BARE_ORDER}, **PRESETS}


def resolve_preset(name: str) -> str:
    """The versioned name a preset name stands for (``"heavy"`` → ``"heavy@v2"``; versioned names map to
    themselves); an unknown name is a ValueError listing the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown rain preset {name!r} (valid: {', '.join(PRESETS)})")
    return PRESETS[name].name


def get_preset(name: str, /, **overrides: Any) -> RainParams:
    """Preset ``name`` with ``overrides`` applied; an unknown name or key is a ValueError listing valid ones.

    A scalar given for a ``(lo, hi)`` range field means a fixed value (``density=0.01`` → ``(0.01, 0.01)``).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown rain preset {name!r} (valid: {', '.join(PRESETS)})")
    return apply_overrides(PRESETS[name], **overrides)


def apply_overrides(params: RainParams, **overrides: Any) -> RainParams:
    """Copy of ``params`` with ``overrides`` (checked and type-converted like a config file)."""
    if not overrides:
        return params
    valid = [f.name for f in dataclasses.fields(RainParams) if f.name != "name"]
    if "name" in overrides:
        raise ValueError("rain parameter 'name' cannot be set: it is the preset's versioned name (e.g. heavy@v2), "
                         "recorded in sidecars with the full parameters; choose the preset instead (--preset)")
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown rain parameter {unknown[0]!r} (valid: {', '.join(valid)})")
    data = to_dict(params)
    for key, value in overrides.items():
        data[key] = [value, value] if key in _RANGE_FIELDS and isinstance(value, (int, float)) else value
    try:
        return from_dict(RainParams, data, where="rain")
    except ConfigError as exc:
        raise ValueError(f"bad rain parameter: {exc}") from exc


def params_from_dict(data: Mapping[str, Any]) -> RainParams:
    """RainParams from a sidecar's ``params`` mapping (the inverse of ``info["params"]``)."""
    try:
        return from_dict(RainParams, data, where="rain")
    except ConfigError as exc:
        raise ValueError(f"bad rain parameter: {exc}") from exc


# ----------------------------------------------------------------------------------------------- building blocks


def line_kernel(length: float, angle_deg: float, drop_size: float = 1.0, taper: float = 0.0) -> np.ndarray:
    """Anti-aliased motion-blur kernel: a line of ``length`` px at ``angle_deg`` from vertical, widened by a
    tent of width ``drop_size`` px; square odd-sized float32, ≈1 on the line's core (unit linear density)."""
    theta = np.deg2rad(angle_deg)
    half = length / 2.0
    radius = int(np.ceil(half + drop_size)) + 1
    size = 2 * radius + 1
    n = max(2, int(np.ceil(length * 4)) + 1)  # 4 sub-pixel samples per px
    t = np.linspace(-half, half, n)
    weight = np.full(n, length / n)
    if taper > 0:
        weight *= np.clip((half - np.abs(t)) / (taper * half), 0.0, 1.0)
    x = radius + t * np.sin(theta)
    y = radius + t * np.cos(theta)
    x0 = np.floor(x).astype(int)
    y0 = np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    kernel = np.zeros((size, size), np.float64)
    for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), weight * w)
    if drop_size > 1.0:
        kernel = signal.convolve2d(kernel, _tent(drop_size), mode="same")
    return kernel.astype(np.float32)


def _tent(width: float) -> np.ndarray:
    """2-D tent footprint of a drop ``width`` px wide (what bilinear upscaling does to one noise pixel),
    scaled so a line convolved with it keeps a core value of ≈1."""
    r = int(np.ceil(width))
    u = np.arange(-r, r + 1, dtype=np.float64)
    h = np.clip(1.0 - np.abs(u) / width, 0.0, None)
    return np.outer(h, h) / h.sum()


def streak_layer(
    shape: tuple[int, int], n_drops: int, kernel: np.ndarray, intensity: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Motion-blurred sparse noise, ``h×w`` float32 ≥ 0 (before levels).

    Drops are placed on a canvas padded by the kernel radius, so streaks enter from outside the frame and the
    borders get as much rain as the centre.
    """
    h, w = shape
    r = kernel.shape[0] // 2
    ph, pw = h + 2 * r, w + 2 * r
    n_total = int(round(n_drops * ph * pw / (h * w)))
    idx = rng.integers(0, ph * pw, n_total)
    amp = rng.uniform(intensity[0], intensity[1], n_total)
    noise = np.bincount(idx, weights=amp, minlength=ph * pw).astype(np.float32).reshape(ph, pw)
    return signal.fftconvolve(noise, kernel, mode="valid").astype(np.float32)


def levels(x: np.ndarray, black: float, white: float, gamma: float) -> np.ndarray:
    """Photoshop levels: map [black, white] to [0, 1], clip, then apply the midtone ``gamma``."""
    y = np.clip((x - black) / (white - black), 0.0, 1.0)
    return y if gamma == 1.0 else y ** (1.0 / gamma)


def pseudo_depth(shape: tuple[int, int], noise_weight: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth pseudo-depth in [0, 1], ``H×W`` float32: 1 (far) at the top to 0 (near) at the bottom, mixed
    with bicubic-upsampled 4×5 uniform noise of weight ``noise_weight``; independent of image content."""
    h, w = shape
    coarse = rng.random((4, 5))
    noise = ndimage.zoom(coarse, (h / 4, w / 5), order=3, mode="nearest", grid_mode=True)[:h, :w]
    ramp = np.linspace(1.0, 0.0, h)[:, None]
    depth = (1.0 - noise_weight) * ramp + noise_weight * noise
    return np.clip(depth, 0.0, 1.0).astype(np.float32)


def canvas_shape(height: int, width: int, reference_size: int) -> tuple[int, int]:
    """Size of the drawing canvas: the image scaled so its shorter side is ``reference_size`` (0 = image).

    Enlarging a small image's canvas stops where its longer side reaches 4 × ``reference_size``, so a thin
    strip (e.g. 8×2000) cannot ask for a giant canvas.
    """
    if reference_size == 0:
        return height, width
    scale = reference_size / min(height, width)
    if scale > 1.0:
        scale = max(1.0, min(scale, 4 * reference_size / max(height, width)))
    return max(MIN_SIDE, int(round(height * scale))), max(MIN_SIDE, int(round(width * scale)))


def _resize(layer: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a canvas layer to the image size (anti-aliased when shrinking)."""
    if layer.shape == shape:
        return layer
    shrink = shape[0] < layer.shape[0] or shape[1] < layer.shape[1]
    out = resize(layer, shape, order=1, mode="reflect", anti_aliasing=shrink, preserve_range=True)
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------------- synthesis


def rain_layers(
    height: int, width: int, params: RainParams, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict[str, Any]], float]:
    """All streak layers merged as one ``H×W`` float32 rain map in [0, 1] (opacity included), the per-layer
    sampled values and the base angle. Layers merge like the blend: screen → 1 − Π(1 − αSᵢ), add → ΣαSᵢ."""
    shape = canvas_shape(height, width, params.reference_size)
    base = float(rng.uniform(*params.angle_range))
    merged = np.zeros(shape, np.float32) if params.blend == "add" else np.ones(shape, np.float32)
    records = []
    for _ in range(params.layers):
        angle = float(np.clip(base + rng.uniform(-params.angle_jitter, params.angle_jitter), -90.0, 90.0))
        length = float(rng.uniform(*params.length_range))
        density = float(rng.uniform(*params.density))
        n_drops = int(round(density * shape[0] * shape[1]))
        kernel = line_kernel(length, angle, params.drop_size, params.taper)
        raw = streak_layer(shape, n_drops, kernel, params.drop_intensity, rng)
        layer = params.opacity * levels(raw, params.levels_black, params.levels_white, params.levels_gamma)
        if params.blend == "add":
            merged += layer
        else:
            merged *= 1.0 - layer
        records.append({"angle_deg": angle, "length_px": length, "density": density, "drops": n_drops})
    rain = merged if params.blend == "add" else 1.0 - merged
    return _resize(rain, (height, width)), records, base


def blend(image: np.ndarray, rain: np.ndarray, mode: str) -> np.ndarray:
    """Blend an ``H×W`` rain map onto an ``H×W×3`` image: screen 1 − (1 − B)(1 − S) or additive B + S."""
    s = rain[..., None]
    return image + s if mode == "add" else 1.0 - (1.0 - image) * (1.0 - s)


def synthesize(
    image: np.ndarray, params: RainParams | str = "light", seed: int = 0, **overrides: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """Add seeded rain to ``image`` (``H×W×3`` float RGB in [0, 1], H, W ≥ 8).

    ``params`` is a preset name or a RainParams; ``overrides`` replace single fields. Returns the rainy
    image (``H×W×3`` float32 in [0, 1]) and a JSON-serialisable dict of everything used: preset, seed,
    image/canvas size, the full parameters and the per-layer/veil values sampled from their ranges.
    """
    img = _check_image(image)
    p = get_preset(params, **overrides) if isinstance(params, str) else apply_overrides(params, **overrides)
    height, width = img.shape[:2]
    rng = np.random.default_rng(seed)
    rain, layers, base = rain_layers(height, width, p, rng)
    out = blend(img, rain, p.blend)
    veil = None
    if p.veil_beta[1] > 0.0:
        beta = float(rng.uniform(*p.veil_beta))
        light = float(rng.uniform(*p.atmospheric_light))
        trans = np.exp(-beta * pseudo_depth((height, width), p.depth_noise, rng))[..., None]
        out = trans * out + (1.0 - trans) * light
        veil = {"beta": beta, "atmospheric_light": light, "mean_transmission": float(trans.mean())}
    info = {
        "preset": p.name,
        "seed": int(seed),
        "image_size": [height, width],
        "canvas_size": list(canvas_shape(height, width, p.reference_size)),
        "params": to_jsonable(to_dict(p)),
        "base_angle_deg": base,
        "layers": layers,
        "veil": veil,
    }
    return np.clip(out, 0.0, 1.0).astype(np.float32), info


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {arr.shape}")
    if min(arr.shape[:2]) < MIN_SIDE:
        raise ValueError(f"image too small for rain synthesis: {arr.shape[:2]} (need H, W >= {MIN_SIDE})")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected a float image in [0, 1], got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------- files


def sidecar_path(dst: str | Path) -> Path:
    """The JSON sidecar next to an output image: ``img001.png`` → ``img001.rain.json``."""
    dst = Path(dst)
    return dst.with_name(dst.stem + SIDECAR_SUFFIX)


def synthesize_file(
    src: str | Path, dst: str | Path, preset: RainParams | str = "light", seed: int = 0, **overrides: Any
) -> dict[str, Any]:
    """Read ``src``, add rain, write ``dst`` (format from its extension, 8-bit) and its ``.rain.json`` sidecar.

    Returns the parameter dict written to the sidecar (plus ``source``: the source file name).
    """
    src, dst = Path(src), Path(dst)
    if not is_image_file(dst):
        raise ValueError(f"output {dst} needs an image extension (e.g. .png)")
    try:
        rainy, info = synthesize(read_image(src), preset, seed, **overrides)
    except ValueError as exc:
        if str(src) in str(exc):
            raise
        raise ValueError(f"{src}: {exc}") from exc
    info["source"] = src.name
    write_image(dst, rainy)
    atomic_write_text(sidecar_path(dst), json.dumps(info, indent=1) + "\n")
    return info


def image_seed(seed: int, relative_path: str | Path) -> int:
    """Per-image seed from the run seed and the image's relative path (stable across machines and runs)."""
    return zlib.crc32(f"{int(seed)}:{Path(relative_path).as_posix()}".encode())


def find_images(src_dir: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Image files under ``src_dir`` (recursively, sorted), relative to it; paths inside ``exclude`` skipped."""
    root = Path(src_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder not found: {root}")
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in walk_files(root):
        if not is_image_file(path):
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        found.append(path.relative_to(root))
    return found


def synthesize_folder(
    src_dir: str | Path, dst_dir: str | Path, preset: RainParams | str = "light", seed: int = 0,
    progress: bool = True, with_labels: bool = False, **overrides: Any,
) -> list[dict[str, Any]]:
    """Rainy copies of every image under ``src_dir`` at the same relative paths and names under ``dst_dir``.

    Each image gets ``image_seed(seed, relative_path)`` and a sidecar. By default other files (labels,
    lists) are never read, copied or changed. ``with_labels=True`` makes ``dst_dir`` a complete task
    dataset: every non-image file (label .txt, data.yaml, COCO JSON, classes.txt) is copied unchanged, and
    so is every label image (:func:`is_label_image`: inside ``masks``/``labels`` or Cityscapes'/ACDC's ground-truth
    folders; segmentation masks are labels, not photos). Returns the per-image parameter dicts (``file`` = relative
    path).
    """
    src_root, dst_root = Path(src_dir), Path(dst_dir)
    if src_root.resolve() == dst_root.resolve():
        raise ValueError(f"destination {dst_root} is the source folder; refusing to overwrite clean images")
    if isinstance(preset, str):
        preset = get_preset(preset, **overrides)  # fail on a bad preset before touching any file
        overrides = {}
    images = find_images(src_root, exclude=dst_root)
    if with_labels:
        labels = [rel for rel in images if is_label_image(rel)]
        images = [rel for rel in images if rel not in set(labels)]
        _copy_unchanged(src_root, dst_root, labels + _other_files(src_root, dst_root))
    if not images:
        raise FileNotFoundError(_no_images_message(src_root, dst_root, with_labels))
    _check_sidecar_clash(images)
    results = []
    for rel in tqdm(images, desc="synth", unit="img", disable=not progress):
        info = synthesize_file(src_root / rel, dst_root / rel, preset, image_seed(seed, rel), **overrides)
        info["file"] = rel.as_posix()
        results.append(info)
    return results


def _no_images_message(src_root: Path, dst_root: Path, with_labels: bool) -> str:
    """Why no image under ``src_root`` is to be rained: none at all, all inside ``dst_root``, or all labels."""
    everything = find_images(src_root)
    inside = len(everything) - len(find_images(src_root, exclude=dst_root))
    if inside:
        return (f"no images to rain under {src_root}: {inside} image(s) were excluded because they lie inside the "
                f"destination {dst_root}; choose a destination outside the source folder")
    if everything and with_labels:
        return (f"no images to rain under {src_root}: all {len(everything)} are label images (in masks/, labels/ or "
                "ground-truth folders), copied unchanged with --with-labels")
    return f"no images found under {src_root}"


# Images in these folders, or named with these parts, are annotations: copied, never rained on. Ours and YOLO's
# (masks/, labels/), Cityscapes' (gtFine/, gtCoarse/: *_gtFine_labelIds.png ...), ACDC's (gt/ or gt_trainval/:
# *_gt_labelTrainIds.png ...).
LABEL_DIRS = {"masks", "labels", "gtFine", "gtCoarse", "gt", "gt_trainval", "gt_trainvaltest"}
LABEL_NAME_PARTS = ("_gtFine_", "_gtCoarse_", "_gt_label", "_gt_inv")


def is_label_image(rel: Path) -> bool:
    """Whether the image file at relative path ``rel`` is an annotation (a mask or label map), not a photo."""
    return bool(LABEL_DIRS & set(rel.parts[:-1])) or any(part in rel.name for part in LABEL_NAME_PARTS)


def _other_files(src_root: Path, dst_root: Path) -> list[Path]:
    """Non-image files under ``src_root`` (relative), skipping anything inside ``dst_root``."""
    skip = dst_root.resolve()
    return sorted(p.relative_to(src_root) for p in walk_files(src_root)
                  if not is_image_file(p) and not p.resolve().is_relative_to(skip))


def _copy_unchanged(src_root: Path, dst_root: Path, files: list[Path]) -> None:
    """Copy ``files`` (relative to ``src_root``) byte for byte to the same places under ``dst_root``."""
    import shutil

    for rel in files:
        (dst_root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_root / rel, dst_root / rel)


def _check_sidecar_clash(images: list[Path]) -> None:
    """Two images differing only in extension (a.png, a.jpg) would share ``a.rain.json``: refuse up front."""
    seen: dict[Path, Path] = {}
    for rel in images:
        side = sidecar_path(rel)
        if side in seen:
            raise ValueError(f"{seen[side]} and {rel} would share the sidecar {side}; rename one of them")
        seen[side] = rel
