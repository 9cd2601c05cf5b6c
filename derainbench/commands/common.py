"""Arguments and exit codes shared by the config-driven sub-commands (train, joint, bench)."""

from __future__ import annotations

import argparse
import signal
from typing import Any

# How bench, joint and train-task read a dataset (`format:` and `path:` of a dataset; README "Dataset formats").
DATASET_FORMATS_HELP = """\
Dataset formats (format: of a dataset, the task's first is the default):
  detection, instance: yolo (path = data.yaml), coco (path = {images: DIR, annotations: FILE})
  segmentation: masks (path = ROOT with {split}/images, {split}/masks, classes.txt, or {images, masks, classes}),
    cityscapes (path = the Cityscapes root with leftImg8bit/{split}/{city}/*_leftImg8bit.png and
    gtFine/{split}/{city}/*_gtFine_labelIds.png, mapped to the 19 evaluated train ids by the table of
    cityscapesScripts helpers/labels.py; *_gtFine_labelTrainIds.png used as they are when present; a RainCityscapes
    folder is a rain source: rainy: [{name, path: .../leftImg8bit_rain/{split}, raincityscapes: {alpha, beta,
    dropsize, pattern: K or spread}}], one row per rain setting)
    acdc (path = the ACDC root: rgb_anon/rain/{split}/{seq}/*_rgb_anon.png and gt/rain/{split}/{seq}/
    *_gt_labelTrainIds.png, also inside rgb_anon_trainvaltest/ and gt_trainval/; real rain: set real_rain: NAME)
  detection: bdd100k (path = {labels: .../det_20/det_{split}.json, images: .../images/100k/{split},
    where: {weather: rainy}}: BDD100K's Scalabel JSON, the 10 detection classes, legacy names mapped, box2d corners
    inclusive; where keeps frames by weather, scene, timeofday)
    voc (path = a VOC devkit year folder with Annotations/, JPEGImages/, ImageSets/Main/{split}.txt, or a folder
    with an XML next to each image; or {root, classes}; difficult objects ignored as the VOC evaluator does)
"""


def add_config_arguments(p: argparse.ArgumentParser, config_help: str, *, required: bool = False,
                         resumable: bool = False, force: bool = False, run_files: str = "") -> None:
    """``--config FILE``, ``key=value`` overrides and ``--no-progress``; with ``resumable`` also ``--resume`` and
    ``--overwrite`` (runs that checkpoint; ``run_files``: what the run writes, which --overwrite deletes), with
    ``force`` ``--force`` (runs that skip finished work)."""
    p.add_argument("--config", required=required, metavar="FILE", help=config_help)
    if resumable:
        p.add_argument("--resume", action="store_true", help="continue from <out>/<name>/last")
        p.add_argument("--overwrite", action="store_true",
                       help=f"start afresh in a run folder that already holds a run: deletes what a run writes there "
                            f"({run_files}) and nothing else; a folder holding no run is refused")
    if force:
        p.add_argument("--force", action="store_true", help="recompute finished cells")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides with dotted keys (e.g. optim.lr=1e-4); unknown keys are errors")


def interrupted_exit_code(result: Any) -> int:
    """The shell's convention for a run stopped by a signal (Ctrl-C: 130, SIGTERM: 143); it saved last/ first."""
    return 128 + int(result.signal or signal.SIGINT)
