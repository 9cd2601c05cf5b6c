"""The task registry: one object per downstream task owns everything that differs between tasks.

Like ultralytics' ``task_map`` (model, trainer, validator, predictor per task), a :class:`Task` holds a task's
dataset formats, loading its model, predicting, its evaluator and metric specs, its training loss and the features
of the feature-consistency term, collating and cropping its labels, saving and drawing its predictions, and training
its model (``derainbench train-task``). The benchmark runner, joint training, ``train-task`` and the report look a
task up with :func:`get_task` and never branch on its name.

Built-in tasks (each in its own module, imported on first use so that nothing heavy loads for a lookup you do not
make): ``detection`` (:mod:`downstream.detection`), ``segmentation`` (:mod:`downstream.segmentation`),
``instance`` (:mod:`downstream.instance`). A new task subclasses :class:`Task`, sets the class attributes and
implements the methods, and calls :func:`register_task` (or is listed in ``BUILTIN``).

Labels and predictions are per image. Images are ``B×3×H×W`` float RGB in [0, 1].
"""

from __future__ import annotations

import importlib
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from downstream.metrics import Evaluator

BUILTIN = {"detection": "downstream.detection", "segmentation": "downstream.segmentation",
           "instance": "downstream.instance"}
_TASKS: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


@dataclass(frozen=True)
class MetricSpec:
    """A metric a task reports: its key (in the evaluator's output and results.csv), how tables label it and which
    direction is better."""

    key: str
    label: str  # full name ("mAP@[.5:.95]")
    short: str = ""  # column heading where space is short ("mAP"); default: ``label``
    higher_is_better: bool = True
    formats: tuple[str, ...] = ()  # the dataset formats whose cells hold it (empty: every format)

    @property
    def heading(self) -> str:
        return self.short or self.label


class Task(ABC):
    """Base class of a downstream task; see the module docstring. Subclasses set every class attribute and implement
    every abstract method (a task missing one cannot be instantiated, so it fails when registered, not mid-run)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # how reports head its tables ("Detection")
    aliases: ClassVar[tuple[str, ...]] = ()  # other accepted spellings ("det")
    formats: ClassVar[tuple[str, ...]] = ()  # dataset formats, the first is the default
    real_rain_formats: ClassVar[tuple[str, ...]] = ()  # formats whose images are real rain (bench: real_rain needed)
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()  # dataset metrics of results.csv; the first is the headline
    per_class: ClassVar[dict[str, MetricSpec]] = {}  # evaluator output holding {class: value} -> its metric
    val_metric: ClassVar[str] = ""  # what joint validation and checkpoint selection follow (a key of ``metrics``)
    image_metric: ClassVar[MetricSpec]  # one image's score in report grids (a key of the evaluator's output)
    scoring_options: ClassVar[tuple[str, ...]] = ()  # bench config keys that change its scores (conf, iou)
    protocol_text: ClassVar[str] = ""  # the metric protocol in a phrase, for reports
    scoring_text: ClassVar[str] = ""  # how reports describe its scoring ({conf}, {iou}: the bench's thresholds)
    grid_text: ClassVar[str] = ""  # how report grids draw it ({conf}: display threshold, {iou}: display overlap)
    model_help: ClassVar[str] = ""  # what its task model is, for messages
    recipe: ClassVar[type]  # the dataclass of its train-task recipe

    # -- data ------------------------------------------------------------------------------------------------------
    @abstractmethod
    def load_dataset(self, format: str, path: Any, split: str = "val") -> Any:
        """Open a labelled dataset: ``ds[i] -> (image H×W×3 float32 in [0, 1], label)``, ``ds.names``, ``len(ds)``,
        ``ds.image_path(i)``, ``ds.images_dir``."""

    @abstractmethod
    def collate(self, labels: Sequence[Any]) -> Any:
        """A batch of labels (of equally sized images) in the form :meth:`loss` takes."""

    @abstractmethod
    def crop(self, label: Any, top: int, left: int, size: int, shape: tuple[int, int]) -> Any:
        """The label of the ``size``×``size`` window at (top, left) of an image of ``shape`` (H, W); the window may
        reach past the image (zero padding), what lies outside is dropped or marked ignored."""

    # -- model -----------------------------------------------------------------------------------------------------
    @abstractmethod
    def load_model(self, path: str | Path, names: Sequence[str], device: str | torch.device = "cpu") -> Any:
        """The task model at ``path`` for a dataset with classes ``names`` (a mismatch is an error)."""

    @abstractmethod
    def module(self, model: Any) -> torch.nn.Module:
        """The ``nn.Module`` inside ``model`` (what is trained, frozen, saved)."""

    def for_inference(self, model: Any, channels_last: bool = False) -> Any:
        """``model`` made ready for scoring only (e.g. Conv+BN fused), weights in NHWC when ``channels_last``."""
        self.module(model).to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return model

    @abstractmethod
    def predict(self, model: Any, images: torch.Tensor, imgsz: int | None = None, conf: float = 0.001,
                iou: float = 0.7) -> list[Any]:
        """Per-image predictions (on the CPU) for ``images``; ``imgsz``/``conf``/``iou`` are the detectors'
        inference size and thresholds (tasks without them ignore them)."""

    def input_size(self, model: Any) -> tuple[int | None, str]:
        """The inference size ``predict`` uses for ``model`` when the config gives none, and where it comes from
        (``("", "")``-like ``(None, "")``: the task has no input size)."""
        return None, ""

    # -- metrics ---------------------------------------------------------------------------------------------------
    @abstractmethod
    def evaluator(self, names: Sequence[str]) -> Evaluator:
        """A fresh evaluator over classes ``names`` (see :mod:`downstream.metrics`)."""

    def dataset_evaluator(self, dataset: Any, indices: Sequence[int]) -> tuple[Evaluator, list[int]]:
        """An evaluator scoring ``dataset``'s images ``indices`` as the dataset's official evaluator does, and the
        image id to pass to ``update`` with each of them. Default: :meth:`evaluator` with the positions as ids
        (tasks whose datasets hold more ground truth than their targets override it)."""
        return self.evaluator(dataset.names), [int(i) for i in indices]

    def evaluate(self, model: Any, batches: Iterable[tuple[torch.Tensor, Sequence[Any], Sequence[int]]],
                 names: Sequence[str], image_stats: bool = False, **options: Any) -> dict[str, Any]:
        """The evaluation loop: predict each batch ``(images B×3×H×W in [0, 1], labels, unique image ids)`` with
        ``options`` (see :meth:`predict`), accumulate in the task's evaluator, and return its scores."""
        evaluator = self.evaluator(names)
        for images, labels, ids in batches:
            evaluator.update(self.predict(model, images, **options), labels, ids)
        return evaluator.compute(image_stats=image_stats)

    def metric_keys(self) -> tuple[str, ...]:
        return tuple(m.key for m in self.metrics)

    def metric(self, key: str) -> MetricSpec:
        """The spec of metric ``key`` (dataset or per-class)."""
        for spec in (*self.metrics, *self.per_class.values(), self.image_metric):
            if spec.key == key:
                return spec
        raise KeyError(f"task {self.name} has no metric {key!r}")

    # -- joint fine-tuning -----------------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, model: Any, freeze: bool = True) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """``loss(images with grad, collated labels) -> scalar``: the task's training loss, differentiable w.r.t. the
        images. ``freeze``: the model stays in eval mode without parameter gradients."""

    @abstractmethod
    def features(self, model: Any, images: torch.Tensor) -> list[torch.Tensor]:
        """The model's multi-scale features of ``images``, differentiable w.r.t. them (feature-consistency term)."""

    # -- samples and drawing ---------------------------------------------------------------------------------------
    @abstractmethod
    def save_label(self, folder: Path, stem: str, label: Any) -> None:
        """Write a prediction or ground truth for reports under ``folder`` (file names start with ``stem``)."""

    @abstractmethod
    def load_label(self, folder: Path, stem: str) -> Any | None:
        """What :meth:`save_label` wrote, or None."""

    @abstractmethod
    def describe(self, label: Any) -> str:
        """A short caption for a ground-truth panel ("3 objects")."""

    @abstractmethod
    def draw(self, ax: Any, image: Any, label: Any, names: Sequence[str], color_of: Callable[[int], str],
             objects: int | None = None, conf: float = 0.25, px_per_pt: float = 1.0) -> set[int]:
        """Show ``image`` (H×W×3 in [0, 1]) on matplotlib axes ``ax`` with ``label`` drawn over it (at most
        ``objects`` instances, none below confidence ``conf``); returns the class ids drawn (for the legend)."""

    # -- training --------------------------------------------------------------------------------------------------
    def open_val_split(self, format: str, data: Any, instead: str) -> Any | None:
        """``data``'s val split (as :meth:`load_dataset` opens it), or None when the dataset has no val split at all
        (a :class:`~downstream.datasets.SplitNotFoundError`; said on stderr with what training does ``instead``). A
        val split that is there but broken (a missing image, a bad label) is an error, never replaced by train."""
        from downstream.datasets import SplitNotFoundError

        try:
            return self.load_dataset(format, data, "val")
        except SplitNotFoundError as exc:
            print(f"train-task: no val split ({exc}); {instead}", file=sys.stderr)
            return None

    @abstractmethod
    def train(self, recipe: Any, data: Any, out: Path, device: torch.device, seed: int, batch: int,
              progress: bool = True, format: str = "", rain: Any = None) -> Path:
        """Train the task model on ``data`` (a dataset in ``format``, one of :attr:`formats`; ``""`` = the first)
        with ``recipe``; ``rain`` (a resolved :class:`downstream.rain_augment.RainAugment`, or None) rains the
        training images before the task's augmentation; returns the path of the best model."""

    def __repr__(self) -> str:
        return f"<task {self.name}>"


def check_class_names(model_names: Sequence[str] | None, names: Sequence[str], model: str | Path) -> None:
    """Refuse a task model whose classes are not the dataset's ``names`` in the same order (a detector trained with
    another tool's class order would be scored with every class swapped): the message names both lists. Only names
    the model carries are compared: ``model_names`` None, ultralytics' defaults ``"0".."K-1"`` (a model built from
    a ``.yaml``, data without names) or a segmenter's ``"class0"..`` (built without class names) skip the check, as
    do such defaults on the dataset's side (the count is checked by the task)."""
    if model_names is None:
        return
    ours, theirs = [str(n) for n in model_names], [str(n) for n in names]
    if ours == theirs or any(side in ([str(i) for i in range(len(side))], [f"class{i}" for i in range(len(side))])
                             for side in (ours, theirs)):
        return
    k = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
    order = " (the same classes in another order)" if sorted(ours) == sorted(theirs) else ""
    raise ValueError(f"the task model {model} predicts classes {_short(ours)} but the dataset's are {_short(theirs)}"
                     f"{order}: class {k} would be scored as {theirs[k] if k < len(theirs) else 'nothing'!r}. Train "
                     "or convert a model with the dataset's classes in its order, or give the dataset its classes in "
                     "the model's order")


def _short(names: list[str], n: int = 20) -> str:
    return "[" + ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "") + "]"


def register_task(task: Task, *, override: bool = False) -> Task:
    """Add ``task`` (an instance) to the registry under its name and aliases."""
    if not task.name or not task.metrics or not task.val_metric or not task.formats:
        raise ValueError(f"{type(task).__name__} must set name, formats, metrics and val_metric")
    if task.val_metric not in task.metric_keys() or not isinstance(getattr(task, "image_metric", None), MetricSpec):
        raise ValueError(f"{type(task).__name__}: val_metric must be one of its metrics {task.metric_keys()} and "
                         "image_metric a MetricSpec")
    if task.name in _TASKS and not override and type(_TASKS[task.name]) is not type(task):
        raise KeyError(f"a task named {task.name!r} is already registered (pass override=True to replace it)")
    taken = [a for a in task.aliases if _ALIASES.get(a, task.name) != task.name]
    if taken and not override:
        raise KeyError(f"task {task.name!r}: alias {taken[0]!r} already names task {_ALIASES[taken[0]]!r}")
    _TASKS[task.name] = task
    for alias in (task.name, *task.aliases):
        _ALIASES[alias] = task.name
    return task


def get_task(name: str) -> Task:
    """The registered task ``name`` (or one of its aliases); unknown names raise a ValueError listing the known."""
    key = _ALIASES.get(name, name)
    if key not in _TASKS:  # a built-in's module registers its task (and aliases) when imported
        for module in [BUILTIN[key]] if key in BUILTIN else BUILTIN.values():
            importlib.import_module(module)
            key = _ALIASES.get(name, name)
            if key in _TASKS:
                break
    if key not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    return _TASKS[key]


def list_tasks() -> list[str]:
    """Names of the built-in and registered tasks."""
    return sorted({*BUILTIN, *_TASKS})


def metric_specs() -> dict[str, MetricSpec]:
    """Every registered task's metric specs by key (dataset, per-class and per-image metrics)."""
    out: dict[str, MetricSpec] = {}
    for name in list_tasks():
        task = get_task(name)
        for spec in (*task.metrics, *task.per_class.values(), task.image_metric):
            out.setdefault(spec.key, spec)
    return out


def load_task_dataset(task: str, format: str, path: Any, split: str = "val") -> Any:
    """Open a dataset of ``task`` in ``format`` (see each task's :meth:`Task.load_dataset`); an unknown format
    names the task's formats."""
    t = get_task(task)
    if format not in t.formats:
        raise ValueError(f"format {format!r} is not for {t.name}; expected one of {t.formats}")
    return t.load_dataset(format, path, split)
