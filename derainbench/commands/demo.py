"""``derainbench demo``: the main job on the embedded offline default (no downloads, no datasets)."""

from __future__ import annotations

import argparse

HELP = """\
Run the whole deraining study offline, on a fresh machine:
  1. rain (light and heavy presets, seeded) on held-out photos that scikit-image ships,
  2. train mspfn-lite on the other photos with rain synthesized on the fly (configs/mspfn_lite_demo.yaml),
  3. derain the held-out rainy photos and score PSNR/SSIM (Y channel, MATLAB rgb2ycbcr, no crop).
Prints a line per stage with its time, then the table; results.csv holds tidy rows.
Running it again reuses finished stages (and resumes an interrupted training) unless --force.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: synth -> train -> derain -> score, offline",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--fast", action="store_true", help="tiny sizes: the whole pipeline in seconds (smoke test)")
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from derainbench.demo import format_table, run_demo

    result = run_demo(args.out, fast=args.fast, force=args.force, device=args.device)
    print()
    print(format_table(result.rows))
    print(f"\nresults: {result.out / 'results.csv'}  ({result.seconds:.0f} s)")
    return 0
