"""Training the task models the benchmark scores with (offline): the config of `derainbench train-task` and the one
function that runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from derain.config import ConfigError, save_config
from downstream.datasets import TASKS


@dataclass
class DetectorRecipe:
    """An ultralytics YOLO detector from a model ``.yaml`` (shipped with ultralytics) or a local ``.pt``."""

    model: str = "yolo11n.yaml"
    epochs: int = 30
    imgsz: int = 320
    yolo: dict[str, Any] = field(default_factory=dict)  # more ultralytics train arguments, e.g. warmup_epochs: 0


@dataclass
class SegmenterRecipe:
    """An smp segmenter with ``encoder_weights=None`` (or ``weights``: a local file for the encoder or model)."""

    arch: str = "Unet"
    encoder: str = "resnet18"
    weights: str | None = None
    iters: int = 1500
    crop: int = 256
    lr: float = 1e-3


@dataclass
class TaskTrainConfig:
    task: str = ""  # detection | segmentation
    data: str = ""  # detection: data.yaml (YOLO layout); segmentation: the masks root ({train,val}/images|masks)
    out: str = "runs/task"
    device: str = "auto"
    seed: int = 0
    batch: int = 16
    detection: DetectorRecipe = field(default_factory=DetectorRecipe)
    segmentation: SegmenterRecipe = field(default_factory=SegmenterRecipe)


def check_task_config(cfg: TaskTrainConfig) -> None:
    """Errors name the key and the fix."""
    if cfg.task not in TASKS:
        raise ConfigError(f"task must be detection or segmentation (e.g. task=detection), got {cfg.task!r}")
    if not cfg.data:
        raise ConfigError("data is required: detection: a YOLO data.yaml; segmentation: a folder with "
                          "{train,val}/images, {train,val}/masks and classes.txt (e.g. data=data/scenes/seg)")
    if not Path(cfg.data).exists():
        raise FileNotFoundError(f"data not found: {cfg.data}")
    if cfg.batch < 1:
        raise ConfigError(f"batch must be >= 1, got {cfg.batch}")


def train_task(cfg: TaskTrainConfig, progress: bool = True) -> Path:
    """Train the configured task model; writes ``<out>/config.yaml`` and returns the best model's path
    (detection: ``<out>/train/weights/best.pt``; segmentation: ``<out>/best``)."""
    from derain.runtime import resolve_device

    check_task_config(cfg)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if TASKS[cfg.task] == "detection":
        from downstream.detection import train_detector

        det = cfg.detection
        return train_detector(cfg.data, model=det.model, epochs=det.epochs, imgsz=det.imgsz, batch=cfg.batch,
                              out_dir=out, device="cpu" if device.type == "cpu" else str(device.index or 0),
                              seed=cfg.seed, **det.yolo)
    from downstream.datasets import load_task_dataset
    from downstream.segmentation import SegmenterConfig, train_segmenter

    seg = cfg.segmentation
    train = load_task_dataset("segmentation", "masks", cfg.data, split="train")
    try:
        val = load_task_dataset("segmentation", "masks", cfg.data, split="val")
    except (FileNotFoundError, ValueError):
        val = None
    model_cfg = SegmenterConfig(arch=seg.arch, encoder=seg.encoder, num_classes=len(train.names),
                                classes=list(train.names), weights=seg.weights)
    return train_segmenter(train, model_cfg, out, iters=seg.iters, batch_size=cfg.batch, lr=seg.lr,
                           crop_size=seg.crop, device=device, seed=cfg.seed, val_dataset=val, progress=progress)
