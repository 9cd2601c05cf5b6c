"""Rain-layer statistics of the real Rain100L / Rain100H-calib pairs next to our presets, and their figure.

The rain layer of a pair is Y(rainy) − Y(clean) (MATLAB Y in [0, 1] units; eval.realism.rain_layer_stats). Each
preset is rendered onto the same clean images exactly as `derainbench realism` renders it (seed 0, per-image seed
from the clean file name). Prints a Markdown table of the mean statistics per set and rain, and writes the figure
(intensity distribution, orientation distribution, sample crops) used in bench/RESULTS.md:

    python bench/rain_realism.py [--data ../shared/data] [--out bench/rain_realism.png]

The derainer side of the check (input PSNR-Y, gain by the authors' PReNet, ratio) is
`derainbench realism --config configs/realism_rain100.yaml`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from derain.data import find_pairs
from derain.imageio import read_image
from eval.realism import ANGLE_BINS, HIST_BINS, STAT_KEYS, rain_layer_stats, render, select_pairs

SETS = {  # set -> (folder, pairs, presets)
    "Rain100L": ("Rain100L", "1-100", ("rain100l", "light@v1")),
    "Rain100H-calib": ("Rain100H-calib", "1-50", ("rain100h", "heavy@v1", "heavy-haze")),
}
SAMPLE = {"Rain100L": "3", "Rain100H-calib": "13"}  # pair shown in the crops


def collect(data: Path) -> dict[str, dict[str, list[dict]]]:
    """Per set, per rain ("real" or preset), the per-pair statistics with histograms."""
    out: dict[str, dict[str, list[dict]]] = {}
    for name, (folder, spec, presets) in SETS.items():
        pairs = select_pairs(find_pairs(data / folder), spec)
        out[name] = {rain: [] for rain in ("real", *presets)}
        for pair in pairs:
            clean = read_image(pair.clean)
            out[name]["real"].append(rain_layer_stats(read_image(pair.rainy), clean, hist=True))
            for p in presets:
                out[name][p].append(rain_layer_stats(render(clean, p, 0, pair.clean.name), clean, hist=True))
    return out


def table(stats: dict[str, dict[str, list[dict]]]) -> str:
    """Markdown table of the mean of each statistic (``angle``: mean |dominant angle|)."""
    lines = ["| set | rain | n | " + " | ".join(STAT_KEYS) + " |", "|---|---|---|" + "---|" * len(STAT_KEYS)]
    for name, by_rain in stats.items():
        for rain, rows in by_rain.items():
            vals = []
            for k in STAT_KEYS:
                v = np.array([r[k] for r in rows], float)
                v = np.abs(v) if k == "angle" else v
                vals.append(f"{np.nanmean(v):.3f}" if k in ("mean", "p50", "p90", "p99", "coverage", "bright", "veil")
                            else f"{np.nanmean(v):.1f}")
            lines.append(f"| {name} | {rain} | {len(rows)} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def figure(stats: dict[str, dict[str, list[dict]]], data: Path, out: Path) -> None:
    """Per set: rain-layer intensity histogram, streak orientation histogram, crops of real vs preset rain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(stats), 3, figsize=(19, 4.6 * len(stats)), gridspec_kw={"width_ratios": [1, 1, 2.4]})
    centers = (HIST_BINS[:-1] + HIST_BINS[1:]) / 2
    acenters = (ANGLE_BINS[:-1] + ANGLE_BINS[1:]) / 2
    for row, (name, by_rain) in zip(axes, stats.items(), strict=True):
        for rain, rows in by_rain.items():
            style = {"color": "k", "lw": 2.5} if rain == "real" else {"lw": 1.5}
            row[0].semilogy(centers, np.mean([r["hist"] for r in rows], 0) + 1e-6, label=rain, **style)
            # per-image orientation histograms centred on each image's dominant angle: the spread, not the tilt
            shifted = [np.interp(acenters, acenters - r["angle"], r["angles"], left=0, right=0) for r in rows]
            row[1].plot(acenters, np.mean(shifted, 0), label=rain, **style)
        row[0].set(title=f"{name}: rain layer Y(rainy) − Y(clean)", xlabel="intensity (Y, [0, 1])",
                   ylabel="share of pixels")
        row[1].set(title=f"{name}: streak orientation about the dominant angle", xlabel="degrees",
                   ylabel="share of streak energy")
        row[0].legend(fontsize=8)
        row[1].legend(fontsize=8)
        folder = SETS[name][0]
        pair = next(p for p in find_pairs(data / folder) if p.name == SAMPLE[name])
        clean = read_image(pair.clean)
        crops = [read_image(pair.rainy)] + [render(clean, p, 0, pair.clean.name) for p in by_rain if p != "real"]
        strip = np.concatenate([c[20:220, 20:220] for c in crops], axis=1)
        row[2].imshow(np.clip(strip, 0, 1))
        row[2].set(title=f"{name} pair {SAMPLE[name]}: " + " | ".join(by_rain), xticks=[], yticks=[])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "rain_realism.png")
    args = parser.parse_args()
    stats = collect(args.data)
    print(table(stats))
    figure(stats, args.data, args.out)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
