"""``derainbench synth``: seeded rainy copies of a folder of clean images, with JSON parameter sidecars."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from derain.config import ConfigError, apply_overrides
from derain.synth import PRESETS, RainParams, get_preset, synthesize_folder

HELP = "rain on a folder of clean images (seeded presets light|medium|heavy, JSON sidecars)"

DESCRIPTION = """\
Write a rainy copy of every image under SRC_DIR (recursively) to DST_DIR, at the same relative path and
file name, so annotation files that refer to images by name stay valid for the rainy copies.

Presets (calibrated on natural photos; mean Y-PSNR of rainy vs clean):
  light    one layer of thin sparse streaks, like Rain100L                     (~25.5 dB)
  medium   two layers of wider streaks plus a faint veil, like Rain1400/800    (~18 dB)
  heavy    three dense layers in several directions under a fog veil,
           like Rain100H                                                        (~12.5 dB)

Each output image gets a sidecar NAME.rain.json next to it (img001.png -> img001.rain.json) holding the
preset, the seed, the full parameters and the values sampled for that image (angles, lengths, veil), so any
image can be regenerated exactly. The per-image seed is derived from --seed and the image's relative path.
Streak lengths and densities are in pixels of a canvas whose shorter side is reference_size (320) px,
so rain looks the same relative to the picture at any resolution.

Labels are never changed. By default only image files are written; non-image files (label files, YAML)
stay in the source dataset.
With --with-labels DST_DIR becomes a complete task dataset for that severity: label files, data.yaml, COCO
JSON, classes.txt and images inside masks/ or labels/ folders are copied unchanged; only photos get rain:
  derainbench synth --preset heavy --with-labels data/scenes/det data/scenes-heavy/det
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``synth`` sub-command on the top-level ``subparsers``."""
    fields = ", ".join(f.name for f in dataclasses.fields(RainParams) if f.name != "name")
    parser = subparsers.add_parser(
        "synth", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src_dir", metavar="SRC_DIR", help="folder of clean images (searched recursively)")
    parser.add_argument("dst_dir", metavar="DST_DIR", help="output folder (same relative names + sidecars)")
    parser.add_argument("--preset", default="light", help=f"rain preset: {', '.join(PRESETS)} (default: light)")
    parser.add_argument("--seed", type=int, default=0, help="run seed; per-image seeds derive from it (default 0)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override one preset parameter, repeatable; ranges as [lo,hi] or one number. Keys: {fields}",
    )
    parser.add_argument("--with-labels", action="store_true",
                        help="make DST_DIR a complete task dataset: copy label files, data.yaml, COCO JSON and "
                             "images under masks/ or labels/ folders unchanged (only photos get rain)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)
    return parser


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["density=0.003", "length_range=[20,40]"]`` → ``{"density": 0.003, "length_range": [20, 40]}``."""
    try:
        return apply_overrides({}, items)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    """Synthesize rain over ``args.src_dir`` into ``args.dst_dir``; returns the exit code."""
    params = get_preset(args.preset, **parse_overrides(args.overrides))
    results = synthesize_folder(args.src_dir, args.dst_dir, params, args.seed, progress=not args.no_progress,
                                with_labels=args.with_labels)
    print(f"wrote {len(results)} rainy images (preset {args.preset}, seed {args.seed}) to {args.dst_dir}")
    return 0
