"""``derainbench scenes``: write the seeded synthetic detection, segmentation and instance data sets (offline)."""

from __future__ import annotations

import argparse

from downstream.scenes import MAX_HIDDEN, OBJECT_CLASSES, SCALE_RANGE, SEG_CLASSES, generate_scenes

HELP = "write seeded labelled scenes (shapes on photo crops): boxes, masks, instance polygons"

DESCRIPTION = f"""\
Write N synthetic scenes of SIZE×SIZE px to OUT_DIR: crops of the colour photos bundled with scikit-image
(random crop, flips, colour jitter) with 2-6 shaded, textured shapes of {len(OBJECT_CLASSES)} classes
({", ".join(OBJECT_CLASSES)}) at {SCALE_RANGE[0]:.0%}-{SCALE_RANGE[1]:.0%} of the side, occluding each other.
Needs no network and no data set; the same arguments give byte-identical files.

Layout:
  det/data.yaml                                 ultralytics YOLO data set (names = classes above, ids 0..5)
  det/images/{{train,val}}/scene_NNNNN.png
  det/labels/{{train,val}}/scene_NNNNN.txt        'cls cx cy w h' normalised; objects more than
                                                {MAX_HIDDEN:.0%} hidden get no box
  det/annotations/instances_{{train,val}}.json  COCO JSON of the same images and boxes
                                                (file_name relative to det/images/SPLIT, category id = cls + 1)
  seg/classes.txt                               {", ".join(SEG_CLASSES)} (id = line - 1)
  seg/{{train,val}}/images/scene_NNNNN.png        the same images
  seg/{{train,val}}/masks/scene_NNNNN.png         uint8 class ids, exact per pixel
  inst/data.yaml                                ultralytics YOLO-seg data set (same classes and objects as det/)
  inst/images/{{train,val}}/scene_NNNNN.png       the same images
  inst/labels/{{train,val}}/scene_NNNNN.txt       'cls x1 y1 ... xn yn' normalised polygons of the visible pixels
  inst/annotations/instances_{{train,val}}.json  COCO JSON with polygon segmentations

Rain them with: derainbench synth OUT_DIR/det/images RAINY_DIR (labels stay valid: same file names).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``scenes`` sub-command on the top-level ``subparsers``."""
    parser = subparsers.add_parser(
        "scenes", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (gets det/, seg/ and inst/)")
    parser.add_argument("--n", type=int, default=200, help="number of scenes (default 200)")
    parser.add_argument("--size", type=int, default=320, help="image side in px (default 320)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="share of scenes in val (default 0.25)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing OUT_DIR/det, seg and inst")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Generate the scenes; returns the exit code."""
    info = generate_scenes(args.out_dir, n=args.n, size=args.size, seed=args.seed, val_fraction=args.val_fraction,
                           progress=not args.no_progress, overwrite=args.overwrite)
    counts = ", ".join(f"{s}: {info['images'][s]} images / {info['boxes'][s]} boxes" for s in info["images"])
    print(f"wrote {args.n} scenes ({args.size} px, seed {args.seed}) to {args.out_dir} ({counts})")
    print(f"  detection:    {info['det_yaml']}  (COCO JSON in {info['det_yaml'].parent / 'annotations'})")
    print(f"  segmentation: {info['seg_root']}")
    inst = info["inst_yaml"]
    print(f"  instances:    {inst}  (COCO JSON with polygons in {inst.parent / 'annotations'})")
    return 0
