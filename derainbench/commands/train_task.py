"""``derainbench train-task``: train a detector (ultralytics YOLO) or segmenter (smp) offline on a dataset."""

from __future__ import annotations

import argparse

HELP = """\
Train the task model the benchmark scores with, so users without pretrained weights can make their own.
Nothing is downloaded: detectors start from a model .yaml (e.g. yolo11n.yaml, shipped with ultralytics)
or a local .pt; segmenters are smp models with encoder_weights=None (or --weights LOCAL_FILE).

  detection:     --data path/to/data.yaml (ultralytics YOLO layout); writes OUT/train/weights/best.pt
  segmentation:  --data ROOT with {train,val}/images, {train,val}/masks and classes.txt (255 = ignore);
                 writes OUT/best and OUT/last (model.safetensors + segmenter.json)

Short runs on small data: add --yolo warmup_epochs=0 (ultralytics otherwise warms up for at least 100
iterations, and a few epochs of a small set learn nothing).

Examples:
  derainbench scenes --n 200 --size 320 data/scenes
  derainbench train-task --task detection --data data/scenes/det/data.yaml --epochs 40 --imgsz 320 \\
      --yolo warmup_epochs=0 --out runs/det
  derainbench train-task --task segmentation --data data/scenes/seg --iters 1500 --out runs/seg
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-task", help="train a detector or segmenter (offline)", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=["detection", "segmentation"])
    p.add_argument("--data", required=True, help="detection: data.yaml; segmentation: masks root folder")
    p.add_argument("--out", default="runs/task", help="output folder (default runs/task)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--no-progress", action="store_true")
    det = p.add_argument_group("detection")
    det.add_argument("--model", default="yolo11n.yaml", help="model .yaml or local .pt (default yolo11n.yaml)")
    det.add_argument("--epochs", type=int, default=30)
    det.add_argument("--imgsz", type=int, default=320)
    det.add_argument("--yolo", action="append", default=[], metavar="KEY=VALUE",
                     help="extra ultralytics train argument, repeatable (e.g. --yolo warmup_epochs=0 --yolo mosaic=0)")
    seg = p.add_argument_group("segmentation")
    seg.add_argument("--arch", default="Unet", help="smp architecture (Unet, FPN, DeepLabV3Plus, ...)")
    seg.add_argument("--encoder", default="resnet18", help="smp encoder (default resnet18)")
    seg.add_argument("--weights", help="local weights file for the encoder or whole model")
    seg.add_argument("--iters", type=int, default=1500)
    seg.add_argument("--crop", type=int, default=256, help="training crop size")
    seg.add_argument("--lr", type=float, default=1e-3)
    p.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict:
    """``["k=v", ...]`` -> ``{k: v}`` with YAML-typed values (numbers, booleans)."""
    from derain.config import apply_overrides

    return apply_overrides({}, items)


def run(args: argparse.Namespace) -> int:
    from derain.runtime import resolve_device

    device = resolve_device(args.device)
    if args.task == "detection":
        from downstream.detection import train_detector
        extra = parse_overrides(args.yolo)
        best = train_detector(args.data, model=args.model, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
                              out_dir=args.out, device="cpu" if device.type == "cpu" else str(device.index or 0),
                              seed=args.seed, **extra)
    else:
        from downstream.datasets import load_task_dataset
        from downstream.segmentation import SegmenterConfig, train_segmenter

        train = load_task_dataset("segmentation", "masks", args.data, split="train")
        try:
            val = load_task_dataset("segmentation", "masks", args.data, split="val")
        except (FileNotFoundError, ValueError):
            val = None
        cfg = SegmenterConfig(arch=args.arch, encoder=args.encoder, num_classes=len(train.names),
                              classes=list(train.names), weights=args.weights)
        best = train_segmenter(train, cfg, args.out, iters=args.iters, batch_size=args.batch, lr=args.lr,
                               crop_size=args.crop, device=device, seed=args.seed, val_dataset=val,
                               progress=not args.no_progress)
    print(f"best {args.task} model: {best}")
    return 0
