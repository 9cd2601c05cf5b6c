"""``derainbench synth``: seeded rainy copies of a folder of clean images, with JSON parameter sidecars."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from derain.config import ConfigError, apply_overrides
from derain.synth import PRESETS, RainParams, get_preset, synthesize_folder

HELP = "rain on a folder of clean images (seeded, versioned presets: rain100l, rain100h, ...; JSON sidecars)"

DESCRIPTION = """\
Write a rainy copy of every image under SRC_DIR (recursively) to DST_DIR, at the same relative path and
file name, so annotation files that refer to images by name stay valid for the rainy copies.

Presets are versioned: NAME@vN always makes the same rain for a seed and image size; a bare NAME is its newest
version, and the sidecar records the versioned name (e.g. "preset": "heavy@v2"). Calibrated presets (v2 family),
measured with `derainbench realism --config configs/realism_rain100.yaml` against real pairs they were not fitted
on, with the authors' PReNet trained on the matching rain (input PSNR-Y ours vs real; deraining gain ratio
ours / real; bench/RESULTS.md "Rain realism"):
  rain100l = light = ladder 2   one layer of sparse gray streaks, one direction per image within +-25 deg,
                                additive; Rain100L pairs 51-100: 26.56 vs 27.25 dB, gain ratio 1.09
  rain100h = heavy = ladder 5   three dense layers of thin, long, bright, nearly parallel streaks, additive,
                                no haze; Rain100H pairs 26-50: 13.42 vs 13.54 dB, gain ratio 1.04
  medium = ladder 3; ladder 1-5  streaks only, no level carries haze (1 is lighter than Rain100L, 3 and 4 lie
                                between rain100l and rain100h)
  heavy-haze                    rain100h under a fog veil: the haze axis on purpose; NOT in distribution for a
                                Rain100H-trained derainer (PReNet gain ratio 0.32)
Haze is its own parameter: veil_beta, the extinction beta of the veil I = T*I + (1 - T)*A with
T = exp(-beta * pseudo-depth), A = atmospheric_light; (0, 0) = no haze. Add it to any preset with
--set veil_beta=[0.3,0.6].

Old presets (derainbench <= 0.2.0), byte-identical under their versioned names: light@v1, medium@v1, heavy@v1,
1@v1 ... 5@v1 (screen-blended streaks; medium@v1, heavy@v1 and levels 3-5 carry a fog veil). heavy@v1 is not
Rain100H-like as measured: PReNet-H gain ratio 0.13 at a matched input PSNR-Y.

Each output image gets a sidecar NAME.rain.json next to it (img001.png -> img001.rain.json) holding the
preset, the seed, the full parameters and the values sampled for that image (angles, lengths, veil), so any
image can be regenerated exactly. The per-image seed is derived from --seed and the image's path relative to
SRC_DIR, as bench seeds its in-memory rain from the path relative to the dataset's image folder: synth on that folder
writes bench's rain of the same seed.
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
    parser.add_argument("--preset", default="light",
                        help=f"rain preset (NAME or NAME@vN): {', '.join(PRESETS)} (default: light = rain100l)")
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
    print(f"wrote {len(results)} rainy images (preset {params.name}, seed {args.seed}) to {args.dst_dir}")
    return 0
