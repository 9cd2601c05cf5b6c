"""``derainbench demo``: the whole study on the embedded offline default (no downloads, no datasets)."""

from __future__ import annotations

import argparse

HELP = """\
Run the whole deraining study offline, on a fresh machine, in minutes:
  1. scenes  labelled scenes from the built-in generator (detection boxes, segmentation masks), seeded
  2. rain    their val split rained at light and heavy severity (seeded presets)
  3. models  a YOLO11n detector, an smp U-Net segmenter, mspfn-lite and prenet derainers: the small weights
             shipped in derainbench/assets/demo (trained by `derainbench demo --retrain`), or trained here
             when --retrain is given or the recipe differs from theirs
  4. joint   a short task-driven fine-tune of mspfn-lite with the detector's loss (mspfn-lite+det)
  5. bench   clean | rainy | identity | prenet | mspfn-lite | mspfn-lite+det on both tasks and severities:
             mAP/mAP50, mIoU/pixel accuracy, PSNR/SSIM (Y channel, MATLAB rgb2ycbcr, no crop)
  6. report  tables, figures and image grids in OUT/report (report.html opens offline)
Prints a line per stage with its time, then the main table. Running it again reuses finished stages
(interrupted trainings resume) unless --force. The recipe is a config (--config FILE, key=value overrides,
e.g. scenes=400 joint.iters=200); OUT/demo.yaml records the one used.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: the whole study offline, with report",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (see derainbench/demo.py)")
    p.add_argument("--config", help="YAML recipe (default: the built-in one)")
    p.add_argument("--out", help="output folder (default: runs/demo)")
    p.add_argument("--fast", action="store_true", help="tiny sizes and tiny models: the whole pipeline in seconds")
    p.add_argument("--retrain", action="store_true", help="train every model here instead of using shipped weights")
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.add_argument("--device", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from derainbench.demo import demo_config, run_demo

    overrides = [*args.overrides, *([f"device={args.device}"] if args.device else [])]
    cfg = demo_config(args.config, overrides, fast=args.fast, out=args.out)
    result = run_demo(cfg, retrain=args.retrain, force=args.force, progress=not args.no_progress)
    print()
    print(result.table)
    print(f"\nreport: {result.report}\nwhole demo: {result.seconds:.0f} s")
    return 0
