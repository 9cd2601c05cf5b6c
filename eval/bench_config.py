"""What a bench run is configured with: the datasets (and their rain sources), derainers and run settings
(:class:`BenchConfig`), the cells a config asks for (:func:`conditions`) and the checks a config must pass before
anything runs (:func:`validate`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from derain.checkpoint import is_checkpoint, load_derainer, read_meta
from derain.config import check_name
from derain.inference import DEFAULT_STAT_PASSES
from derain.registry import check_options, list_models, model_options
from derain.synth import PRESETS
from downstream.tasks import get_task


@dataclass
class RainSource:
    """Rainy copies of a dataset's images made elsewhere (another synthesizer, a script, the MSPFN authors'
    COCO350/BDD350 samples): ``path`` is the rained copy of the dataset's image folder or of a folder above it (e.g.
    the root ``derainbench synth --with-labels`` writes); :func:`match_rain_source` has the rule."""

    name: str  # its rows carry this in the ``severity`` column
    path: str
    # a RainCityscapes folder (leftImg8bit_rain/{split}): {alpha, beta, dropsize, pattern: K | spread} picks one
    # rain setting of its 36 renderings per frame (downstream.raincityscapes)
    raincityscapes: dict[str, Any] | None = None


@dataclass
class DatasetSpec:
    """One task dataset and the task model that scores it."""

    name: str
    task: str  # a registered task (downstream.tasks): detection | segmentation | instance
    format: str  # one of the task's formats (yolo, coco, bdd100k, voc; masks, cityscapes, acdc; README "Tasks")
    path: Any  # yolo: data.yaml; coco: {images, annotations}; masks: root or {images, masks, classes}
    model: str  # detection, instance: local .pt or model .yaml; segmentation: segmenter checkpoint folder
    split: str = "val"
    imgsz: int | None = None  # detector inference size (default: the image's long side)
    limit: int | None = None  # score at most this many images
    rainy: list[RainSource] = field(default_factory=list)  # pre-rained folders, scored beside the presets
    # The labelled images are themselves rainy (real rain, no clean twin): they are scored as severity NAME (rainy
    # and each derainer); no clean row, no synthetic severities, no PSNR/SSIM (nothing to compare with).
    real_rain: str | None = None


@dataclass
class DerainerSpec:
    """A derainer to compare: a registered name (plus weights), a checkpoint folder, or a weights file as its authors
    publish it (a zoo architecture such as Restormer: :func:`derain.checkpoint.load_derainer`)."""

    name: str
    model: str
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tile: int | None = None  # derain in tiles of this size (None: whole images)
    overlap: int | None = None  # pixels neighbouring tiles share (None: the model's default, 128 for MSPFN, else 64)
    stat_passes: int = DEFAULT_STAT_PASSES  # tiled passes gathering MSPFN's whole-image statistics (see derain)


@dataclass
class BenchConfig:
    name: str = "bench"
    seed: int = 0
    device: str = "auto"
    severities: list[str] = field(default_factory=lambda: ["light", "heavy"])
    datasets: list[DatasetSpec] = field(default_factory=list)
    derainers: list[DerainerSpec] = field(default_factory=list)
    out: str = "runs/bench"
    samples: int = 3  # images saved per condition (for reports)
    conf: float = 0.001  # detector confidence threshold (COCO protocol: keep low)
    iou: float = 0.7  # detector NMS IoU
    bootstrap: int = 1000  # paired-bootstrap resamples over images (and rain seeds) for 95 % intervals (0 = none)
    rain_seeds: int = 1  # synthetic rain made with seeds seed, seed+1, ...: values are means, with their std
    # How cells run; none of these changes a number (beyond float rounding), so they are not in cell fingerprints.
    cache: bool = True  # derained images computed once per (input, derainer), kept under <out>/cache
    batch: int | None = None  # images per task-model call (None: 8)
    derain_batch: int | None = None  # images per derainer call (None: the inference policy's: on CPU by image size)
    channels_last: bool | None = None  # NHWC derainers and task models (None: on for CPU, where it measured faster)
    derain_compile: bool | None = None  # torch.compile derainers (None: the inference policy's, per derainer)
    # Autocast derainers on CUDA (bf16 where supported). Off by default, unlike `derainbench derain`, so that scores
    # do not depend on the GPU; it changes outputs beyond float rounding, so it is part of the derainer digest.
    derain_amp: bool = False
    workers: int | None = None  # DataLoader workers reading images and synthesizing rain (None: half the cores, 1-4)


@dataclass(frozen=True)
class Cell:
    dataset: str
    severity: str  # "none" for clean
    method: str  # clean | rainy | a derainer name
    rep: int = 0  # rain replicate: synthetic rain made with seed ``cfg.seed + rep``

    @property
    def key(self) -> str:
        return f"{self.dataset}__{self.severity}__{self.method}" + (f"__r{self.rep}" if self.rep else "")


def conditions(cfg: BenchConfig, dataset: str) -> list[tuple[Cell, DerainerSpec | None]]:
    """Clean first, then per severity (synthetic presets, then the dataset's rain sources) the rainy images and each
    derainer's output; a real-rain dataset has only its own rainy images and their derained versions."""
    spec = next(d for d in cfg.datasets if d.name == dataset)
    if spec.real_rain:
        cells: list[tuple[Cell, DerainerSpec | None]] = []
        severities = [spec.real_rain]
    else:
        cells = [(Cell(dataset, "none", "clean"), None)]
        severities = [*cfg.severities, *(src.name for src in spec.rainy)]
    for sev in severities:
        for rep in range(cfg.rain_seeds if sev in PRESETS else 1):  # only synthetic rain has a seed
            cells.append((Cell(dataset, sev, "rainy", rep), None))
            cells += [(Cell(dataset, sev, d.name, rep), d) for d in cfg.derainers]
    return cells


def validate(cfg: BenchConfig) -> None:
    """Fail early, with what to do, on configs that cannot run."""

    if not cfg.datasets:
        raise ValueError("bench config has no datasets")
    for sev in cfg.severities:
        if sev not in PRESETS:
            raise ValueError(f"unknown severity {sev!r}; rain presets are {', '.join(PRESETS)}")
    for ds in cfg.datasets:
        check_name(ds.name, "dataset name")
        sources = [src.name for src in ds.rainy] + ([ds.real_rain] if ds.real_rain else [])
        for src in sources:
            check_name(src, f"dataset {ds.name!r}: rain source name")
        taken = {"none", SUMMARY_SEVERITY, *PRESETS}
        clash = sorted({s for s in sources if s in taken or sources.count(s) > 1})
        if clash:
            raise ValueError(f"dataset {ds.name!r}: rain source names must be unique and differ from the presets and "
                             f"'none'/'mean': {clash}")
        if ds.real_rain and ds.rainy:
            raise ValueError(f"dataset {ds.name!r}: a real-rain dataset (real_rain) has no clean images to pair with "
                             "pre-rained copies (rainy)")
    for d in cfg.derainers:
        check_name(d.name, "derainer name")
    names = [d.name for d in cfg.derainers]
    clash = {"clean", "rainy"} & set(names) or {n for n in names if names.count(n) > 1}
    if clash:
        raise ValueError(f"derainer names must be unique and not 'clean'/'rainy': {sorted(clash)}")
    for d in cfg.derainers:
        if Path(d.model).is_file() and d.model not in list_models():  # a weights file (load_derainer's rule 3)
            if d.weights or d.options:
                raise ValueError(f"derainer {d.name!r}: model {d.model} is a weights file; weights and options go "
                                 "with registered names")
            try:  # what it holds (and that it is safe to read) is known before any cell runs
                load_derainer(d.model)
            except ValueError as exc:
                raise ValueError(f"derainer {d.name!r}: {exc}") from None
            continue
        if d.model not in list_models() and not is_checkpoint(d.model):
            raise ValueError(f"derainer {d.name!r}: unknown model {d.model!r}; registered derainers are "
                             f"{', '.join(list_models())}, or give a checkpoint folder or a weights file (a zoo "
                             "checkpoint such as Restormer's deraining.pth)")
        arch = d.model if d.model in list_models() else read_meta(d.model)["name"]
        valid = model_options(arch)
        unknown = sorted(set(d.options) - set(valid))
        if unknown and valid:
            raise ValueError(f"derainer {d.name!r}: unknown option {unknown[0]!r} for {arch} (its options: "
                             f"{', '.join(valid)})")
        if d.model in list_models():  # required options, types and bounds (the zoo's arch and hyperparameters)
            try:
                check_options(d.model, d.options)
            except ValueError as exc:
                raise ValueError(f"derainer {d.name!r}: {exc}") from None
        if d.weights and not Path(d.weights).exists():
            raise FileNotFoundError(f"derainer {d.name!r}: weights file not found: {d.weights}")
        if d.tile is not None and (d.tile < 1 or d.overlap is not None and not 0 <= d.overlap < d.tile):
            raise ValueError(f"derainer {d.name!r}: tile must be >= 1 and overlap in [0, tile), got tile {d.tile}, "
                             f"overlap {d.overlap}")
        if d.stat_passes < 0:
            raise ValueError(f"derainer {d.name!r}: stat_passes must be >= 0, got {d.stat_passes}")
    for key in ("conf", "iou"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:  # NaN fails too
            raise ValueError(f"{key} must be within [0, 1] (a detector threshold), got {getattr(cfg, key)}")
    if cfg.bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 (resamples for the 95 % intervals; 0 = none), got {cfg.bootstrap}")
    if cfg.rain_seeds < 1:
        raise ValueError(f"rain_seeds must be >= 1 (the number of rain seeds per synthetic severity), got "
                         f"{cfg.rain_seeds}")
    for key in ("batch", "derain_batch"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1 (images per model call), got {getattr(cfg, key)}")
    if cfg.workers is not None and cfg.workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = read images in the main process), got {cfg.workers}")
    for ds in cfg.datasets:
        if ds.imgsz is not None and ds.imgsz < 1:
            raise ValueError(f"dataset {ds.name!r}: imgsz must be a positive number of pixels, got {ds.imgsz}")
        if ds.limit is not None and ds.limit < 1:
            raise ValueError(f"dataset {ds.name!r}: limit must be >= 1, got {ds.limit}")
        try:
            task = get_task(ds.task)
        except ValueError as exc:
            raise ValueError(f"dataset {ds.name!r}: {exc}") from exc
        if ds.format not in task.formats:
            raise ValueError(f"dataset {ds.name!r}: format {ds.format!r} is not for {task.name}; expected one of "
                             f"{task.formats}")
        if ds.format in task.real_rain_formats and not ds.real_rain:
            raise ValueError(f"dataset {ds.name!r}: {ds.format} images are real rain; set real_rain: NAME (the "
                             "severity their rows get)")
        if not Path(ds.model).exists() and not str(ds.model).endswith((".yaml", ".yml")):
            raise FileNotFoundError(
                f"dataset {ds.name!r}: task model not found: {ds.model}. Supply {task.model_help} (e.g. trained "
                "with `derainbench train-task`); nothing is ever downloaded."
            )


SUMMARY_SEVERITY = "mean"  # the ``severity`` of robustness rows (averages over the run's rain severities)
