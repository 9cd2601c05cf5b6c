"""``derainbench realism``: is the synthetic rain rain that real-rain derainers recognise? (eval/realism.py)"""

from __future__ import annotations

import argparse

from derainbench.commands.common import add_config_arguments

HELP = """\
Measure synthetic rain against real paired rain with a derainer trained on the real kind: for each case
(a paired folder, input/ + target/ or any layout `derainbench score --pairs` knows, a derainer, presets),
every preset is rendered onto the clean images of the pairs (per-image seed from the seed and the clean file
name, as `derainbench synth` on the clean folder, rounded to 8 bits), the real and the rendered rainy images
are derained, and the table prints input PSNR-Y, output PSNR-Y, the gain and the gain ratio ours / real.
A preset counts as in distribution when its input PSNR-Y is within 2 dB of the real rain's and its gain is at
least 0.8x the real gain. With stats=true (default) it also prints rain-layer statistics (rainy - clean on
MATLAB Y): intensity percentiles, coverage, veil floor, streak angle and spread, width and length.

Config: YAML with `cases: [{name, pairs, select, derainer: {name, model, weights}, presets: [...]}]`, `seed`,
`stats`, `threads`, `out` (CSV of per-image rows); key=value overrides as in the other commands.

Example (the calibration check of the rain100l / rain100h presets, held-out pairs; bench/RESULTS.md):
  derainbench realism --config configs/realism_rain100.yaml
  derainbench realism --config configs/realism_rain100.yaml stats=false threads=1
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("realism", help="synthetic vs real rain, measured with a real-rain derainer", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, "realism YAML (see configs/realism_rain100.yaml)", required=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run every case, print the table (and statistics), optionally write the per-image CSV."""
    import csv
    from pathlib import Path

    from derain.config import load_config
    from eval.realism import RealismConfig
    from eval.realism import run as run_realism

    cfg = load_config(RealismConfig, args.config, args.overrides)
    text, _, rows = run_realism(cfg, progress=not args.no_progress)
    print(text)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        with open(cfg.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"per-image rows: {cfg.out}")
    return 0
