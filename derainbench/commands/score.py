"""``derainbench score``: PSNR/SSIM of predictions against ground truth, the way deraining papers report them."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

COLUMNS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")

HELP = """\
Score derained images against ground truth: PSNR (dB, peak 255) and SSIM (Wang et al.: 11×11 Gaussian
window, sigma 1.5, K1 0.01, K2 0.03, 'valid' region) on the Y channel and on RGB.
Protocol: Y = MATLAB rgb2ycbcr, no border crop (unless --crop-border): images quantized to uint8, Y is
BT.601 studio range (16..235) rounded to integers like MATLAB; the numbers MSPFN, PReNet and later papers
report. The rgb columns use the uint8 RGB values (RGB SSIM = mean of the per-channel SSIMs).

Images are matched by file name (same stem; a folder-wide rain-/norain- prefix is ignored); missing or
extra files and size mismatches are errors naming them.

Examples:
  derainbench score --pred out/derained --gt data/Rain100L/target
  derainbench score --pairs data/Rain100L               # the rainy input itself vs clean
  derainbench score --pred out/derained --gt data/Rain100L/target --out scores.csv --json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="PSNR/SSIM (MATLAB Y and RGB) against ground truth", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", type=Path, help="folder of predicted (derained) images")
    p.add_argument("--gt", type=Path, help="folder of ground-truth clean images")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unmatched, unreadable or size-mismatched pairs (counted in a warning) instead of failing")
    p.add_argument("--pairs", type=Path, metavar="ROOT",
                   help="score the rainy inputs of a paired root (rain/+norain/, input/+target/, rainy/+gt/)")
    p.add_argument("--out", type=Path, metavar="FILE.csv", help="write per-image scores (plus a mean row)")
    p.add_argument("--json", action="store_true",
                   help="print only one JSON object of the means to stdout: n, psnr_y, ssim_y, psnr_rgb, ssim_rgb")
    p.add_argument("--crop-border", type=int, default=0, metavar="N",
                   help="ignore N pixels on each side (default 0, the papers' protocol)")
    p.add_argument("--device", default="cpu", help="torch device for the metrics (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def protocol(crop_border: int) -> str:
    """One-line description of what the numbers are, for table headers."""
    crop = "no border crop" if crop_border == 0 else f"{crop_border}-px border crop"
    return (f"PSNR (dB, peak 255) / SSIM (Wang, 11×11 Gaussian σ=1.5); uint8 images; "
            f"Y = MATLAB rgb2ycbcr, {crop}")


def run(args: argparse.Namespace) -> int:
    """Score, print a table (or one JSON object) and optionally write the CSV; returns the exit code."""
    import torch
    from tqdm import tqdm

    from derain.imageio import read_tensor
    from derain.metrics import MetricAccumulator, compute_metrics

    pairs = _pairs(args)
    device = torch.device(args.device)
    acc = MetricAccumulator()
    with torch.inference_mode():
        for pair in tqdm(pairs, desc="score", unit="img", file=sys.stderr, disable=args.no_progress or None,
                         leave=False):
            pred, gt = read_tensor(pair.rainy).to(device), read_tensor(pair.clean).to(device)
            if pred.shape != gt.shape:
                raise ValueError(f"size mismatch: {pair.rainy} is {tuple(pred.shape[1:])} but "
                                 f"{pair.clean} is {tuple(gt.shape[1:])}")
            acc.update(compute_metrics(pred, gt, args.crop_border), names=[pair.name])
    means = acc.means()
    if args.out:
        write_csv(args.out, acc.rows(), means)
    if args.json:
        print(json.dumps({"n": acc.count, **{k: means[k] for k in COLUMNS}}))
    else:
        print(format_table(acc.rows(), means, args.crop_border))
        if args.out:
            print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _pairs(args: argparse.Namespace) -> list:
    """The (pred, gt) pairs to score, as ``derain.data.Pair`` (pred in ``.rainy``, gt in ``.clean``)."""
    from derain.data import find_pairs, pairs_from_dirs

    if args.pairs is not None:
        if args.pred is not None or args.gt is not None:
            raise ValueError("use either --pairs ROOT or --pred DIR --gt DIR, not both")
        return find_pairs(args.pairs, skip_bad=args.skip_bad)
    if args.pred is None or args.gt is None:
        raise ValueError("need --pred DIR and --gt DIR (or --pairs ROOT)")
    return pairs_from_dirs(args.pred, args.gt, sides=("pred", "gt"), skip_bad=args.skip_bad)


def format_table(rows: list[dict], means: dict[str, float], crop_border: int = 0) -> str:
    """Aligned text table: a protocol line, one row per image, then the mean."""
    width = max([len("name"), len("mean"), *(len(str(r["name"])) for r in rows)])
    lines = [f"# {protocol(crop_border)}",
             f"{'name':<{width}}  {'psnr_y':>8}  {'ssim_y':>7}  {'psnr_rgb':>8}  {'ssim_rgb':>8}"]
    for row in [*rows, {"name": "mean", **means}]:
        lines.append(f"{row['name']!s:<{width}}  {row['psnr_y']:>8.3f}  {row['ssim_y']:>7.4f}  "
                     f"{row['psnr_rgb']:>8.3f}  {row['ssim_rgb']:>8.4f}")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], means: dict[str, float]) -> None:
    """Per-image CSV (name + the four metrics, 6 decimals) with a final ``mean`` row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", *COLUMNS])
        for row in [*rows, {"name": "mean", **means}]:
            writer.writerow([row["name"], *(_fmt(row[k]) for k in COLUMNS)])


def _fmt(value: float) -> str:
    return str(value) if math.isinf(value) or math.isnan(value) else f"{value:.6f}"
