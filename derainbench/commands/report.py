"""``derainbench report``: tables, plots and image grids from one or several benchmark runs."""

from __future__ import annotations

import argparse

HELP = """\
Build a report from the output folder(s) of `derainbench bench` (each needs results.csv and config.yaml):

  report.md, report.html   config summary (datasets, models, seeds, severities, device, versions);
                           restoration table (PSNR/SSIM on Y, MATLAB rgb2ycbcr, no crop); detection table
                           (mAP, mAP@.5, drop, recovery); segmentation table (mIoU, pixel accuracy, drop,
                           recovery); best value per column in bold; the figures. The HTML embeds its
                           images: one file that opens offline.
  tables/*.csv             every table (full-precision numbers; recoveries within noise are flagged)
  tables/*.tex             the result tables for a paper (\\usepackage{booktabs})
  figures/*.png            task metric vs severity; PSNR-Y vs task metric with its correlation; per-class
                           AP/IoU at the worst severity; training curves (log.csv in a run or next to a
                           derainer checkpoint it names); per dataset and severity a grid of sample images
                           (ground truth | clean | rainy | each derainer) with boxes or masks drawn

Several runs: methods from different runs sit side by side (a derainer name used for different models
gets its run's name appended); runs of the same config with different seeds are aggregated as
mean ± std. Runs that score a dataset differently (other task model, split, ...) are an error.

Recovery = (derained - rainy) / (clean - rainy) is shown as n/a† where the drop clean - rainy is within
noise (|drop| < --min-drop, or < 2 std over seeds): it would divide by almost zero.

Examples:
  derainbench report runs/bench/demo                       # writes runs/bench/demo/report/
  derainbench report runs/bench/seed0 runs/bench/seed1 --out runs/report-seeds
  derainbench report runs/bench/demo --format csv,tex      # tables only, no figures
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="tables, plots and image grids from benchmark runs",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output folder of `derainbench bench`")
    p.add_argument("--out", help="report folder (default: RUN_DIR/report; several runs: <common parent>/report)")
    p.add_argument(
        "--format",
        default="md,html,tex,csv",
        help="comma-separated subset of md,html,tex,csv (default: all; figures come with md/html)",
    )
    p.add_argument("--images", type=int, default=3, help="sample images per qualitative grid (default: 3)")
    p.add_argument(
        "--display-conf",
        type=float,
        default=0.25,
        metavar="C",
        help="draw detections from this confidence up in the image grids (default: 0.25; scores use every box)",
    )
    p.add_argument(
        "--min-drop",
        type=float,
        default=None,
        help="smallest |clean - rainy| drop (metric units, 0-1) for which recovery is shown (default: 0.01)",
    )
    p.add_argument("--quiet", action="store_true", help="do not print the main table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reports.build import build_report
    from reports.tables import MIN_DROP, main_table_text

    min_drop = MIN_DROP if args.min_drop is None else args.min_drop
    if args.images < 0 or min_drop < 0:
        raise ValueError("--images and --min-drop must not be negative")
    if not 0 <= args.display_conf <= 1:
        raise ValueError(f"--display-conf must be in [0, 1], got {args.display_conf}")
    report = build_report(
        args.runs,
        out=args.out,
        formats=args.format,
        images=args.images,
        min_drop=min_drop,
        display_conf=args.display_conf,
    )
    if not args.quiet:
        print(main_table_text(report.combined, min_drop=min_drop))
        print()
    main = next((f for f in (report.html, report.markdown) if f in report.files), None)
    print(f"report: {main or report.out} ({len(report.files)} files in {report.out})")
    return 0
