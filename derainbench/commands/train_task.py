"""``derainbench train-task``: train a task model (YOLO detector or instance segmenter, smp segmenter) offline."""

from __future__ import annotations

import argparse

from derainbench.commands.common import add_config_arguments

HELP = """\
Train the task model the benchmark scores with, so users without pretrained weights can make their own.
Nothing is downloaded: YOLO models start from a model .yaml (e.g. yolo11n.yaml, yolo11n-seg.yaml, shipped
with ultralytics) or a local .pt; segmenters are smp models with encoder_weights=None (or recipe.weights=LOCAL_FILE).
Configured like train, joint and bench: a YAML file (configs/task_*.yaml) plus key=value overrides with dotted
keys; the run writes OUT/config.yaml.

Keys: task (detection | segmentation | instance), data, format (the task's dataset format; default yolo for
detection and instance, masks for segmentation), out (default runs/task), device, seed, batch (16), rain.KEY
(rain augmentation, below), and recipe.KEY for the task's recipe. An out that already holds a trained model is
refused unless --overwrite.
  detection: recipe.model (yolo11n.yaml), .epochs (30), .imgsz (320), recipe.yolo.KEY (any ultralytics train
    argument, checked before training; recipe.yolo.resume=true continues OUT's interrupted run from
    OUT/train/weights/last.pt); data = a YOLO data.yaml, or with format=coco|bdd100k|voc the dataset's path
    as bench reads it (its train and val splits are trained on through a YOLO view in OUT/data: image links and
    label files, rebuilt for each run); both splits are opened and checked as bench opens them (a truncated image
    or a bad label is an error; a dataset in another format without any val split validates on train, said on
    stderr; a val split that is there but broken is an error); writes OUT/train/weights/best.pt
  instance: the same keys, recipe.model (yolo11n-seg.yaml); data = a YOLO-seg data.yaml (polygon labels)
  segmentation: recipe.arch (Unet), .encoder (resnet18), .weights, .iters (1500), .crop (256), .lr (1e-3);
    data = ROOT with {train,val}/images, {train,val}/masks and classes.txt (255 = ignore); or, with
    format=cityscapes, the Cityscapes root (leftImg8bit/, gtFine/: the 19 evaluated classes, label ids mapped by
    the official table); writes OUT/best, OUT/last

Rain augmentation (a rain-trained task model, the third strategy beside deraining and joint tuning; README
"Three strategies against rain"): rain.presets=[rain100l,rain100h] (synthetic rain presets, recorded by
versioned name, e.g. rain100l@v1) or rain.path=DIR (pre-rained copies of the training images, matched as bench
matches a rain source: DIR is the rainy copy of the image folder or of a folder above it; with
rain.raincityscapes={alpha: A, beta: B, dropsize: D} a RainCityscapes leftImg8bit_rain/train folder), rain.p
(0.5: the probability that an image is rained, drawn per image and epoch), rain.seed (default: seed). The clean
image is rained as it is loaded, before the task's augmentation; labels and the user's files are never changed;
validation stays clean. Synthetic rain is new every epoch: detection and instance through a hook in ultralytics'
train dataset (no extra disk; the epoch travels with each sample into the dataloader workers, so the rain is the
same for any recipe.yolo.workers), segmentation for every sampled crop. OUT/config.yaml records the rain used
(presets with versions, p, seed); the draw is a fixed function of them (downstream/rain_augment.py). Synthesis
runs on the CPU (about 0.1 s for a 320 px image, 0.7 s for a 2048x1024 frame).

Short runs on small data: recipe.yolo.warmup_epochs=0 (ultralytics otherwise warms up for at least 100
iterations, and a few epochs of a small set learn nothing).

Examples:
  derainbench scenes --n 200 --size 320 data/scenes
  derainbench train-task --config configs/task_detection.yaml data=data/scenes/det/data.yaml out=runs/det
  derainbench train-task task=segmentation data=data/scenes/seg recipe.iters=1500 out=runs/seg
  derainbench train-task task=segmentation format=cityscapes data=/data/cityscapes recipe.crop=512 out=runs/cs
  derainbench train-task task=detection format=bdd100k out=runs/bdd \\
    "data={labels: '/data/bdd100k/labels/det_20/det_{split}.json', images: '/data/bdd100k/images/100k/{split}'}"
  derainbench train-task --config configs/task_instance.yaml data=data/scenes/inst/data.yaml out=runs/inst
  derainbench train-task --config configs/task_detection.yaml data=data/scenes/det/data.yaml out=runs/det-rain \
    "rain.presets=[rain100l,rain100h]" rain.p=0.5
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-task", help="train a task model (offline)", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, "YAML config (see configs/task_*.yaml); omitted = defaults plus the overrides")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an out that already holds a trained model: deletes what a run writes there "
                        "(train/, data/, best/, last/, config.yaml) and nothing else; without it such an out is "
                        "refused (recipe.yolo.resume=true continues it instead)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from derain.config import load_config
    from downstream.train_task import TaskTrainConfig, train_task

    cfg = load_config(TaskTrainConfig, args.config, args.overrides)
    best = train_task(cfg, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"best {cfg.task} model: {best}")
    return 0
