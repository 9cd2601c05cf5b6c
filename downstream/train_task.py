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


# What a train-task run writes in its out folder (all that --overwrite deletes): ultralytics' run (train/) and the
# YOLO view of another format (data/) for detection and instance, best/ and last/ for segmentation, config.yaml.
RUN_FILES = ("train", "data", "best", "last", "config.yaml")
# A trained model in out: what a second run would replace.
MODEL_FILES = ("train/weights/best.pt", "train/weights/last.pt", "best", "last")


def check_out(cfg: TaskTrainConfig, recipe: Any, overwrite: bool) -> None:
    """A fresh run into an ``out`` that holds a trained model (:data:`MODEL_FILES`) is refused unless ``overwrite``
    (which deletes :data:`RUN_FILES` there and nothing else), as ``train`` and ``joint`` refuse; continuing the
    interrupted run (``recipe.yolo.resume``) is not a fresh run."""
    from derain.train import delete_run_files

    out = Path(cfg.out)
    resume = getattr(recipe, "yolo", {}).get("resume") not in (None, False, "false", "False")
    if resume and overwrite:
        raise ConfigError("recipe.yolo.resume continues the run in out and --overwrite discards it: give one of them")
    kept = [f for f in MODEL_FILES if (out / f).exists()]
    if kept and not resume and not overwrite:
        raise FileExistsError(f"{out} already holds a trained model ({', '.join(kept)}); start afresh with "
                              "--overwrite (deletes the run's train/, data/, best/, last/ and config.yaml, nothing "
                              "else), or choose another out=...")
    if overwrite and out.is_dir():
        foreign = [name for name in RUN_FILES if (out / name).exists() and not _written_by_a_run(out / name)]
        if foreign:  # out=. beside the user's own data/ or train/ folders
            raise FileExistsError(f"{out}: {', '.join(foreign)} {'was' if len(foreign) == 1 else 'were'} not "
                                  "written by train-task; --overwrite deletes only a run's own files, so choose "
                                  "another out=...")
        delete_run_files(out, RUN_FILES, RUN_FILES, "train-task", "choose another out=...")


def _written_by_a_run(path: Path) -> bool:
    """Whether ``path`` (one of :data:`RUN_FILES` in out) looks as a train-task run writes it: ultralytics' run
    folder (``args.yaml`` or ``weights/``), a segmenter folder (``segmenter.json``), the YOLO view (links only, see
    :func:`downstream.datasets.is_yolo_view`), ``config.yaml`` a file."""
    from downstream.datasets import is_yolo_view

    if path.is_symlink():
        return False
    if path.name == "train":
        return (path / "args.yaml").is_file() or (path / "weights").is_dir()
    if path.name in ("best", "last"):
        return (path / "segmenter.json").is_file() or (path / "model.safetensors").is_file()
    if path.name == "data":
        return is_yolo_view(path)
    return path.is_file()


def train_task(cfg: TaskTrainConfig, progress: bool = True, overwrite: bool = False) -> Path:
    """Train the configured task model; writes ``<out>/config.yaml`` and returns the best model's path
    (detection, instance: ``<out>/train/weights/best.pt``; segmentation: ``<out>/best``). An ``out`` holding a
    trained model is refused unless ``overwrite`` (see :func:`check_out`)."""
    from derain.runtime import resolve_device

    recipe = check_task_config(cfg)
    if cfg.rain is not None:
        cfg = dataclasses.replace(cfg, rain=cfg.rain.resolve(cfg.seed))  # what config.yaml records is what is used
    task = get_task(cfg.task)
    check_out(cfg, recipe, overwrite)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    extra: dict[str, Any] = {"format": cfg.format} if cfg.format else {}  # tasks written before formats/rain run
    if cfg.rain is not None:
        extra["rain"] = cfg.rain
    return task.train(recipe, cfg.data, out, resolve_device(cfg.device), cfg.seed, cfg.batch, progress=progress,
                      **extra)
