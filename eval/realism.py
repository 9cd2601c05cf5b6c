"""Rain realism: is our synthetic rain rain that real-rain derainers recognise?

For paired real rain (rainy ``input/`` + clean ``target/``, any layout :func:`derain.data.find_pairs` knows) and a
derainer trained on that kind of rain (e.g. the authors' PReNet for Rain100L/H), each preset is rendered onto the
very clean images of the pairs (per-image seed ``image_seed(seed, clean file name)``, as ``derainbench synth`` on the
clean folder would, then rounded to 8 bits like a saved PNG); real and rendered rain are derained, and the table
gives input PSNR-Y, output PSNR-Y, the gain (output − input) and the gain ratio ours / real. A preset is *in
distribution* for that derainer when its input PSNR-Y is within 2 dB of the real rainy images' and its gain is at
least 0.8× the real gain (the criteria of issue 20). PSNR-Y is the papers' protocol (:mod:`derain.metrics`).

:func:`rain_layer_stats` measures the rain layer itself (rainy − clean on MATLAB Y, in [0, 1] units): intensity
distribution, coverage (density), veil floor, streak orientation and its spread, streak width and length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from derain import metrics
from derain.data import Pair, find_pairs
from derain.imageio import read_image
from derain.synth import image_seed, resolve_preset, synthesize

INPUT_TOLERANCE_DB = 2.0  # |input PSNR-Y ours − real| allowed for a preset to count as in distribution
MIN_GAIN_RATIO = 0.8  # gain ours / gain real required


@dataclass
class DerainerRef:
    """A derainer as ``derainbench derain`` takes it: a registered name or checkpoint folder, optional weights."""

    name: str = "prenet"  # label in the table
    model: str = "prenet"
    weights: str | None = None


@dataclass
class RealismCase:
    """One real paired set, the derainer trained on that kind of rain, and the presets to compare with it."""

    name: str = ""
    pairs: str = ""  # paired root (input/ + target/, rain/ + norain/, ...)
    select: str = ""  # pairs to use by numeric name, e.g. "51-100" or "1-25,40"; empty = all
    derainer: DerainerRef = field(default_factory=DerainerRef)
    presets: list[str] = field(default_factory=list)


@dataclass
class RealismConfig:
    """``derainbench realism``: the cases, the rain seed, and whether to measure the rain layer's statistics."""

    cases: list[RealismCase] = field(default_factory=list)
    seed: int = 0
    stats: bool = True  # also print rain-layer statistics (real vs each preset)
    threads: int = 0  # torch CPU threads (0 = torch's default)
    out: str = ""  # optional CSV of the per-image rows


def select_pairs(pairs: list[Pair], spec: str) -> list[Pair]:
    """The pairs whose name is a number in ``spec`` (``"51-100"``, ``"1-25,40"``); all of them for ``""``."""
    if not spec.strip():
        return pairs
    ranges: list[tuple[int, int]] = []  # kept as bounds: '1-100000000000' is two numbers, not a set of them
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ValueError(f"bad pair selection {spec!r}: use numbers and ranges like '51-100' or '1-25,40'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise ValueError(f"bad pair selection {spec!r}: the range {part.strip()!r} runs backwards ({lo} > {hi})")
        ranges.append((lo, hi))
    chosen = [p for p in pairs if p.name.isdigit() and any(lo <= int(p.name) <= hi for lo, hi in ranges)]
    if not chosen:
        raise ValueError(f"pair selection {spec!r} matches none of the {len(pairs)} pairs")
    return chosen


def _tensor(img: np.ndarray) -> torch.Tensor:
    """``H×W×3`` float in [0, 1] -> ``1×3×H×W`` float32 on the 8-bit grid (as a saved PNG)."""
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    return (metrics.quantize(x) / 255.0).float()


def render(clean: np.ndarray, preset: str, seed: int, file_name: str) -> np.ndarray:
    """``preset`` rain on ``clean`` (``H×W×3`` in [0, 1]) with the per-image seed of ``file_name``, 8-bit rounded."""
    rainy, _ = synthesize(clean, preset, image_seed(seed, file_name))
    return _tensor(rainy)[0].permute(1, 2, 0).numpy()


def run_case(case: RealismCase, seed: int = 0, progress: bool = True,
             with_stats: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Derain the real rain and every preset's rain of ``case``: per-image rows (``case, rain, pair, psnr_in,
    psnr_out``) and, with ``with_stats``, per-image rain-layer statistics rows (``case, rain, pair, ...``)."""
    from tqdm import tqdm

    from derain.checkpoint import load_derainer
    from derain.inference import derain_tensor

    pairs = select_pairs(find_pairs(case.pairs), case.select)
    presets = [resolve_preset(p) for p in case.presets]
    model = load_derainer(case.derainer.model, weights=case.derainer.weights)
    rows: list[dict[str, Any]] = []
    stats: list[dict[str, Any]] = []
    for pair in tqdm(pairs, desc=case.name, unit="pair", disable=not progress):
        clean = read_image(pair.clean)
        target = _tensor(clean)
        sources = [("real", read_image(pair.rainy))] + [(p, render(clean, p, seed, pair.clean.name)) for p in presets]
        for rain, rainy in sources:
            x = _tensor(rainy)
            y = derain_tensor(model, x, channels_last=True)
            rows.append({"case": case.name, "rain": rain, "pair": pair.name,
                         "psnr_in": float(metrics.psnr(x, target)[0]), "psnr_out": float(metrics.psnr(y, target)[0])})
            if with_stats:
                stats.append({"case": case.name, "rain": rain, "pair": pair.name,
                              **rain_layer_stats(x[0].permute(1, 2, 0).numpy(), target[0].permute(1, 2, 0).numpy())})
    return rows, stats


def summarize(rows: list[dict[str, Any]], derainers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Per (case, rain): n, mean input and output PSNR-Y, gain, gain ratio ours/real, Δinput ours − real and
    whether the preset meets the in-distribution criteria (``ok``; None for the real rain)."""
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        real = None
        for rain in dict.fromkeys(r["rain"] for r in mine):
            sel = [r for r in mine if r["rain"] == rain]
            pin = float(np.mean([r["psnr_in"] for r in sel]))
            pout = float(np.mean([r["psnr_out"] for r in sel]))
            row = {"case": case, "derainer": (derainers or {}).get(case, ""), "rain": rain, "n": len(sel),
                   "psnr_in": pin, "psnr_out": pout, "gain": pout - pin, "ratio": None, "d_in": None, "ok": None}
            if rain == "real":
                real = row
            elif real is not None:
                row["ratio"] = row["gain"] / real["gain"] if real["gain"] > 0 else float("nan")
                row["d_in"] = pin - real["psnr_in"]
                row["ok"] = abs(row["d_in"]) <= INPUT_TOLERANCE_DB and row["ratio"] >= MIN_GAIN_RATIO
            out.append(row)
    return out


def format_table(summary: list[dict[str, Any]]) -> str:
    """The realism table as fixed-width text (PSNR-Y in dB, MATLAB Y, no crop)."""
    head = (f"{'set':<16}{'derainer':<12}{'rain':<16}{'n':>4}{'input':>9}{'output':>9}{'gain':>8}{'ratio':>8}"
            f"{'Δinput':>9}  in-dist.")
    lines = [head]
    for r in summary:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        d_in = "" if r["d_in"] is None else f"{r['d_in']:+.2f}"
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "no")
        lines.append(f"{r['case']:<16}{r['derainer']:<12}{r['rain']:<16}{r['n']:>4}{r['psnr_in']:>9.2f}"
                     f"{r['psnr_out']:>9.2f}{r['gain']:>+8.2f}{ratio:>8}{d_in:>9}  {ok}")
    lines.append(f"PSNR-Y in dB (MATLAB Y, no crop); gain = output − input; ratio = gain / real gain; in distribution: "
                 f"|Δinput| <= {INPUT_TOLERANCE_DB:g} dB and ratio >= {MIN_GAIN_RATIO:g}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- rain layer stats

STAT_KEYS = ("mean", "p50", "p90", "p99", "coverage", "bright", "veil", "angle", "spread", "width", "length")
STAT_HELP = {
    "mean": "mean rain layer (rainy − clean, Y in [0, 1])",
    "p50": "median of the rain layer", "p90": "90th percentile", "p99": "99th percentile",
    "coverage": "share of pixels brightened by > 0.05 (streak density)",
    "bright": "share of pixels brightened by > 0.15",
    "veil": "veil floor: median of the 15-px local minimum of the layer (haze/accumulation)",
    "angle": "dominant streak angle, degrees from vertical", "spread": "orientation spread (circular std, degrees)",
    "width": "streak width: across-streak autocorrelation full width at half maximum (px)",
    "length": "streak length: along-streak autocorrelation full width at half maximum (px)",
}
HIST_BINS = np.linspace(-0.1, 0.7, 33)  # rain-layer intensity histogram bins
ANGLE_BINS = np.linspace(-45.0, 45.0, 31)  # streak orientation histogram bins (degrees from vertical)


def luma(img: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr Y of ``H×W×3`` RGB in [0, 1], as ``H×W`` float64 in [0, 1] units (Y / 255, not rounded)."""
    w = np.array([65.481, 128.553, 24.966]) / 255.0
    return (16.0 / 255.0) + np.asarray(img, np.float64) @ w


def rain_layer_stats(rainy: np.ndarray, clean: np.ndarray, hist: bool = False) -> dict[str, Any]:
    """Statistics of the rain layer ``d = Y(rainy) − Y(clean)`` of one pair (``H×W×3`` in [0, 1] each).

    Keys: :data:`STAT_KEYS` (see :data:`STAT_HELP`); with ``hist`` also ``hist`` (share of pixels per
    :data:`HIST_BINS` bin) and ``angles`` (energy share per :data:`ANGLE_BINS` bin).
    """
    d = luma(rainy) - luma(clean)
    out: dict[str, Any] = {"mean": float(d.mean())}
    out.update({f"p{q}": float(np.percentile(d, q)) for q in (50, 90, 99)})
    out["coverage"] = float((d > 0.05).mean())
    out["bright"] = float((d > 0.15).mean())
    out["veil"] = float(np.median(ndimage.minimum_filter(ndimage.median_filter(d, 3), 15)))
    # orientation: structure tensor of the layer; a streak's angle from vertical = its gradient's angle from x
    gx, gy = ndimage.sobel(d, 1), ndimage.sobel(d, 0)
    jxx, jyy, jxy = (ndimage.gaussian_filter(g, 2.0) for g in (gx * gx, gy * gy, gx * gy))
    theta = 0.5 * np.arctan2(2 * jxy, jxx - jyy)
    weight = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) * (d > 0.05)
    if weight.sum() > 0:
        m = (weight * np.exp(2j * theta)).sum() / weight.sum()
        out["angle"] = float(np.rad2deg(np.angle(m)) / 2)
        out["spread"] = float(np.rad2deg(np.sqrt(-2 * np.log(max(abs(m), 1e-12))) / 2))
    else:
        out["angle"] = out["spread"] = float("nan")
    out["width"], out["length"] = _streak_size(d, np.deg2rad(out["angle"]) if weight.sum() > 0 else 0.0)
    if hist:
        out["hist"] = (np.histogram(d, HIST_BINS)[0] / d.size).tolist()
        ang = np.histogram(np.rad2deg(theta), ANGLE_BINS, weights=weight)[0]
        out["angles"] = (ang / max(ang.sum(), 1e-12)).tolist()
    return out


def _streak_size(d: np.ndarray, theta: float) -> tuple[float, float]:
    """(width, length) in px of the streaks of layer ``d``: the full widths at half maximum of its autocorrelation
    (high-passed, 31-px box) across and along the streak direction ``theta`` (a box streak w × L gives w and L)."""
    hp = d - ndimage.uniform_filter(d, 31)
    h, w = hp.shape
    spec = np.abs(np.fft.rfft2(hp, s=(2 * h, 2 * w))) ** 2
    ac = np.fft.fftshift(np.fft.irfft2(spec, s=(2 * h, 2 * w)))
    if ac[h, w] <= 0:
        return float("nan"), float("nan")
    ac /= ac[h, w]
    t = np.arange(0.0, 120.0, 0.25)
    along = ndimage.map_coordinates(ac, [h + t * np.cos(theta), w + t * np.sin(theta)], order=1)
    across = ndimage.map_coordinates(ac, [h - t * np.sin(theta), w + t * np.cos(theta)], order=1)

    def first_below(curve: np.ndarray, level: float) -> float:
        below = np.nonzero(curve < level)[0]
        return float(t[below[0]]) if below.size else float(t[-1])

    return 2.0 * first_below(across, 0.5), 2.0 * first_below(along, 0.5)


def summarize_stats(stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of each statistic per (case, rain)."""
    out = []
    for key in dict.fromkeys((s["case"], s["rain"]) for s in stats):
        sel = [s for s in stats if (s["case"], s["rain"]) == key]
        row: dict[str, Any] = {"case": key[0], "rain": key[1], "n": len(sel)}
        for k in STAT_KEYS:
            vals = [s[k] for s in sel if np.isfinite(s[k])]
            row[k] = float(np.mean(np.abs(vals) if k == "angle" else vals)) if vals else float("nan")
        out.append(row)
    return out


def format_stats(summary: list[dict[str, Any]]) -> str:
    """The rain-layer statistics as fixed-width text (``angle`` = mean |dominant angle|)."""
    lines = [f"{'set':<16}{'rain':<16}{'n':>4}" + "".join(f"{k:>9}" for k in STAT_KEYS)]
    for r in summary:
        lines.append(f"{r['case']:<16}{r['rain']:<16}{r['n']:>4}" + "".join(f"{r[k]:>9.3f}" for k in STAT_KEYS))
    lines.append("rain layer = Y(rainy) − Y(clean) in [0, 1]; " + "; ".join(f"{k}: {v}" for k, v in STAT_HELP.items()
                                                                             if k in ("coverage", "veil", "spread")))
    return "\n".join(lines)


def run(cfg: RealismConfig, progress: bool = True) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Every case of ``cfg``: the printed report, the summary rows and the per-image rows."""
    if not cfg.cases:
        raise ValueError("realism config has no cases")
    names = [case.name for case in cfg.cases]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # their rows would be pooled into one summary row
        raise ValueError(f"realism case names must be unique (each names its rows): {twice} given twice")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    rows: list[dict[str, Any]] = []
    stats: list[dict[str, Any]] = []
    for case in cfg.cases:
        if not case.name or not case.pairs:
            raise ValueError("every realism case needs a name and a pairs folder")
        if not Path(case.pairs).is_dir():
            raise FileNotFoundError(f"case {case.name!r}: paired data folder not found: {case.pairs}")
        r, s = run_case(case, cfg.seed, progress, cfg.stats)
        rows += r
        stats += s
    summary = summarize(rows, {c.name: c.derainer.name for c in cfg.cases})
    text = format_table(summary)
    if cfg.stats:
        text += "\n\n" + format_stats(summarize_stats(stats))
    return text, summary, rows


__all__ = [
    "DerainerRef", "RealismCase", "RealismConfig", "format_stats", "format_table", "rain_layer_stats", "render",
    "run", "run_case", "select_pairs", "summarize", "summarize_stats",
]
