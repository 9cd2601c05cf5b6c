"""Training the task models the benchmark scores with (offline): the config of `derainbench train-task` and the one
function that runs it. What is trained and how is the task's (:mod:`downstream.tasks`): ``recipe`` holds the keys
of its recipe dataclass (``DetectorRecipe``, ``SegmenterRecipe``, ``InstanceRecipe``); absent keys keep their
defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from derain.config import ConfigError, from_dict, save_config
from downstream.rain_augment import RainAugment
from downstream.tasks import get_task, list_tasks


@dataclass
class TaskTrainConfig:
    task: str = ""  # a registered task: detection | segmentation | instance
    # detection, instance: a YOLO data.yaml; segmentation: the masks root ({train,val}/images|masks); other formats:
    # the dataset's path as bench reads it (a Cityscapes root; BDD100K's {labels, images, where}; README "Dataset
    # formats")
    data: Any = ""
    format: str = ""  # one of the task's dataset formats; "" = its first (yolo, masks)
    out: str = "runs/task"
    device: str = "auto"
    seed: int = 0
    batch: int = 16
    recipe: dict[str, Any] = field(default_factory=dict)  # the task's recipe (model, epochs, ...); see its class
    # rain augmentation (a rain-trained task model): {presets: [rain100l, ...] | path: RAINY-COPY, p, seed}; recorded
    # resolved (versioned presets, the seed used) in OUT/config.yaml; see downstream.rain_augment
    rain: RainAugment | None = None


def check_task_config(cfg: TaskTrainConfig) -> Any:
    """The task's recipe built from ``cfg.recipe``; errors name the key and the fix."""
    if not cfg.task:
        raise ConfigError(f"task is required: one of {', '.join(list_tasks())} (e.g. task=detection)")
    try:
        task = get_task(cfg.task)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    recipe = from_dict(task.recipe, cfg.recipe or {}, where="recipe")
    if cfg.format and cfg.format not in task.formats:
        raise ConfigError(f"format {cfg.format!r} is not for {task.name}; expected one of {task.formats}")
    if not cfg.data:
        raise ConfigError("data is required: detection, instance: a YOLO data.yaml; segmentation: a folder with "
                          "{train,val}/images, {train,val}/masks and classes.txt (e.g. data=data/scenes/seg)")
    if isinstance(cfg.data, (str, Path)) and not Path(cfg.data).exists():
        raise FileNotFoundError(f"data not found: {cfg.data}")
    if cfg.batch < 1:
        raise ConfigError(f"batch must be >= 1, got {cfg.batch}")
    return recipe


def train_task(cfg: TaskTrainConfig, progress: bool = True) -> Path:
    """Train the configured task model; writes ``<out>/config.yaml`` and returns the best model's path
    (detection, instance: ``<out>/train/weights/best.pt``; segmentation: ``<out>/best``)."""
    from derain.runtime import resolve_device

    recipe = check_task_config(cfg)
    if cfg.rain is not None:
        cfg = dataclasses.replace(cfg, rain=cfg.rain.resolve(cfg.seed))  # what config.yaml records is what is used
    task = get_task(cfg.task)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    extra: dict[str, Any] = {"format": cfg.format} if cfg.format else {}  # tasks written before formats/rain run
    if cfg.rain is not None:
        extra["rain"] = cfg.rain
    return task.train(recipe, cfg.data, out, resolve_device(cfg.device), cfg.seed, cfg.batch, progress=progress,
                      **extra)
