"""Benchmark pipeline speed: in-memory (derain -> detector -> metrics) vs the naive disk route, one run.

Ours: each rainy image is derained and the tensor goes straight into the detector; predictions accumulate
in the COCO evaluator. Naive: derained images are written as PNGs (with the labels copied beside them in
an ultralytics layout), then ultralytics' own validator runs over that folder. Both start from the same
in-memory rainy images and the same models; rain synthesis is outside both timings.

    python bench/pipeline_speed.py --scenes data/scenes --detector runs/det/train/weights/best.pt \
        --derainer identity runs/train/mspfn-lite-demo/best [--severity heavy] [--imgsz 192]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from derain.checkpoint import load_derainer
from derain.imageio import to_tensor, write_image
from derain.inference import derain_tensor
from downstream.datasets import YoloDetectionDataset, yolo_label_path
from downstream.detection import load_detector
from eval.bench import rainy_image
from eval.detection import DetectionEvaluator


def ours(dataset, rainy, derainer, detector, imgsz) -> tuple[float, float]:
    """Seconds and mAP50 of the in-memory pipeline."""
    t = time.perf_counter()
    ev = DetectionEvaluator(dataset.names)
    for i, x in enumerate(rainy):
        y = derain_tensor(derainer, x)
        ev.update(detector.predict(y, imgsz=imgsz), [dataset.target(i)], [i])
    map50 = ev.compute()["map50"]
    return time.perf_counter() - t, map50


def naive(dataset, rainy, derainer, detector_path, imgsz, workdir: Path) -> tuple[float, float]:
    """Seconds and mAP50 of writing derained PNGs and running ultralytics' validator on the folder."""
    from ultralytics import YOLO

    t = time.perf_counter()
    images, labels = workdir / "images" / "val", workdir / "labels" / "val"
    labels.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(rainy):
        src = Path(dataset.image_path(i))
        write_image(images / f"{src.stem}.png", derain_tensor(derainer, x)[0])
        if yolo_label_path(src).is_file():
            shutil.copy(yolo_label_path(src), labels / f"{src.stem}.txt")
    data = workdir / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(workdir), "train": "images/val", "val": "images/val",
                                    "names": dict(enumerate(dataset.names))}))
    metrics = YOLO(str(detector_path)).val(data=str(data), imgsz=imgsz, batch=1, conf=0.001, iou=0.7, plots=False,
                                           device="cpu", workers=0, verbose=False, project=str(workdir / "val"))
    return time.perf_counter() - t, float(metrics.box.map50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default="data/scenes", help="output of `derainbench scenes`")
    ap.add_argument("--detector", required=True, help="a trained YOLO .pt")
    ap.add_argument("--derainer", nargs="+", default=["identity"], help="registered names or checkpoint folders")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per route; the fastest counts")
    ap.add_argument("--severity", default="heavy")
    ap.add_argument("--imgsz", type=int, default=192)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    dataset = YoloDetectionDataset(Path(args.scenes) / "det" / "data.yaml", "val")
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    rainy = [to_tensor(rainy_image(dataset[i][0], args.severity, 0, Path(dataset.image_path(i)).name))[None]
             for i in range(n)]
    detector = load_detector(args.detector)
    detector.model.fuse(verbose=False)  # Conv+BN folded, as ultralytics' validator does
    print(f"{n} images, {args.severity} rain, detector {args.detector}, imgsz {args.imgsz}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    for name in args.derainer:
        derainer = load_derainer(name)
        with torch.inference_mode():
            derain_tensor(derainer, rainy[0])  # warm-up (one-time allocations) outside both timings
        t_ours, t_naive = float("inf"), float("inf")
        for _ in range(args.repeats):  # alternate so both routes see the same machine state
            t, map_ours = ours(dataset, rainy, derainer, detector, args.imgsz)
            t_ours = min(t_ours, t)
            with tempfile.TemporaryDirectory() as tmp:
                t, map_naive = naive(dataset, rainy, derainer, args.detector, args.imgsz, Path(tmp))
            t_naive = min(t_naive, t)
        print(f"\nderainer {name}")
        print(f"  in-memory pipeline : {t_ours:7.2f} s  {n / t_ours:6.2f} img/s  mAP50 {map_ours:.4f}")
        print(f"  naive (PNG + val)  : {t_naive:7.2f} s  {n / t_naive:6.2f} img/s  mAP50 {map_naive:.4f}")
        print(f"  speed-up: {t_naive / t_ours:.2f}x")


if __name__ == "__main__":
    main()
