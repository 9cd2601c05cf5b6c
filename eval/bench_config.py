"""What a bench run is configured with: the datasets (and their rain sources), derainers and run settings
(:class:`BenchConfig`), the cells a config asks for (:func:`plan`, each a :class:`PlannedCell`) and the checks a
config must pass before anything runs (:func:`validate`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from derain.checkpoint import is_checkpoint, load_derainer, read_meta
from derain.config import check_name
from derain.inference import DEFAULT_STAT_PASSES
from derain.registry import check_options, list_models, model_options
from derain.synth import PRESETS
from downstream.tasks import get_task

if TYPE_CHECKING:
    from eval.fingerprints import OpenedDataset


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


TRAINED_ON = ("clean", "rain")  # what a task model was trained on (the report's strategies table reads it)
DEFAULT_TASK_MODEL = "model"  # the name of a dataset's task model given by the one-model shorthand ``model:``


@dataclass
class TaskModelSpec:
    """One task model that scores a dataset (an entry of ``models:``)."""

    name: str  # its rows carry this in the ``task_model`` column
    model: str  # detection, instance: local .pt or model .yaml; segmentation: segmenter checkpoint folder
    trained_on: str = "clean"  # clean | rain: trained on clean images, or with rain (augmentation, rainy photos)


@dataclass
class DatasetSpec:
    """One task dataset and the task model(s) that score it: ``model`` (one) or ``models`` (several)."""

    name: str
    task: str  # a registered task (downstream.tasks): detection | segmentation | instance
    format: str  # one of the task's formats (yolo, coco, bdd100k, voc; masks, cityscapes, acdc; README "Tasks")
    path: Any  # yolo: data.yaml; coco: {images, annotations}; masks: root or {images, masks, classes}
    # detection, instance: local .pt or model .yaml; segmentation: segmenter checkpoint folder. Shorthand for
    # models: [{name: model, model: PATH}] (trained on clean images)
    model: str | None = None
    split: str = "val"
    # detector inference size; default: the size a .pt was trained at (train_args imgsz, as ultralytics' validator
    # does), else (a .yaml, or a .pt without that record) each image's long side. Cells record the size used.
    imgsz: int | None = None
    limit: int | None = None  # score at most this many images
    rainy: list[RainSource] = field(default_factory=list)  # pre-rained folders, scored beside the presets
    # The labelled images are themselves rainy (real rain, no clean twin): they are scored as severity NAME (rainy
    # and each derainer); no clean row, no synthetic severities, no PSNR/SSIM (nothing to compare with).
    real_rain: str | None = None
    # Several task models, each scoring every condition: cells of the first keep the keys (and fingerprints) a
    # one-model run gives, so a rerun adding a model computes only the new model's cells.
    models: list[TaskModelSpec] = field(default_factory=list)

    @property
    def task_models(self) -> list[TaskModelSpec]:
        """The dataset's task models, ``model:`` as a one-model list."""
        return self.models or ([TaskModelSpec(DEFAULT_TASK_MODEL, self.model)] if self.model else [])


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
    # Jointly tuned with this task model (a name among the datasets' task models, e.g. the one `derainbench joint`
    # had as task_model): the report's strategies table shows it with that task model only.
    tuned_with: str | None = None


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
    """A cell's identity: its file name under ``cells/`` (:attr:`key`) and its rows' coordinates."""

    dataset: str
    severity: str  # "none" for clean
    method: str  # clean | rainy | a derainer name
    rep: int = 0  # rain replicate: synthetic rain made with seed ``cfg.seed + rep``
    task_model: str = ""  # the task model's name; "" for the dataset's first, whose keys are a one-model run's

    @property
    def key(self) -> str:
        return (f"{self.dataset}__{self.severity}__{self.method}" + (f"__on-{self.task_model}" if self.task_model
                                                                     else "") + (f"__r{self.rep}" if self.rep else ""))


@dataclass(frozen=True)
class Scoring:
    """The run settings that change a cell's numbers (so they are in its fingerprint): the detector thresholds,
    whether intervals are kept (``bootstrap`` > 0 keeps per-image statistics) and derainer autocast."""

    conf: float
    iou: float
    bootstrap: int
    derain_amp: bool

    @classmethod
    def of(cls, cfg: BenchConfig) -> Scoring:
        return cls(conf=cfg.conf, iou=cfg.iou, bootstrap=cfg.bootstrap, derain_amp=cfg.derain_amp)


@dataclass(frozen=True)
class PlannedCell:
    """One cell as a value: what it scores (dataset spec, condition, derainer) and how (rain seed, scoring
    settings); :func:`eval.bench.plan_cells` adds the opened dataset, its inputs and fingerprint, and
    :func:`eval.cells.run_cell` runs it. :func:`plan` is the one place that lists a config's cells."""

    cell: Cell
    dataset: DatasetSpec
    task_model: TaskModelSpec
    derainer: DerainerSpec | None  # None for clean and rainy
    seed: int  # synthetic rain's seed (the run seed + the cell's replicate)
    scoring: Scoring
    data: OpenedDataset | None = None  # the opened dataset (None until planned against it)
    inputs: dict[str, str] = field(default_factory=dict)  # a digest per part of what determines its numbers
    fingerprint: str = ""  # the digest of ``inputs``

    @property
    def key(self) -> str:
        return self.cell.key

    @property
    def clean_input(self) -> bool:
        """The task model sees the dataset's own images (clean cells, or a real-rain dataset's rainy photos)."""
        return self.cell.severity == "none" or bool(self.dataset.real_rain)


def plan(cfg: BenchConfig, dataset: str) -> list[PlannedCell]:
    """The cells of ``dataset``, in run order: per task model, clean first, then per severity (synthetic presets,
    then the dataset's rain sources) the rainy images and each derainer's output; a real-rain dataset has only its
    own rainy images and their derained versions."""
    spec = next(d for d in cfg.datasets if d.name == dataset)
    scoring = Scoring.of(cfg)
    if spec.real_rain:
        conditions: list[tuple[str, str, int, DerainerSpec | None]] = []
        severities = [spec.real_rain]
    else:
        conditions = [("none", "clean", 0, None)]
        severities = [*cfg.severities, *(src.name for src in spec.rainy)]
    for sev in severities:
        for rep in range(cfg.rain_seeds if sev in PRESETS else 1):  # only synthetic rain has a seed
            conditions.append((sev, "rainy", rep, None))
            conditions += [(sev, d.name, rep, d) for d in cfg.derainers]
    return [PlannedCell(Cell(dataset, sev, method, rep, tm.name if i else ""), spec, tm, derainer, cfg.seed + rep,
                        scoring)
            for i, tm in enumerate(spec.task_models) for sev, method, rep, derainer in conditions]


def validate(cfg: BenchConfig) -> None:
    """Fail early, with what to do, on configs that cannot run."""

    if not cfg.datasets:
        raise ValueError("bench config has no datasets")
    names = [ds.name for ds in cfg.datasets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # their cells would share keys: one dataset's rows would replace the other's
        raise ValueError(f"dataset names must be unique (they key the cells and rows): {twice} given twice")
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
        if (ds.model is None) == (not ds.models):
            raise ValueError(f"dataset {ds.name!r}: give its task model as model: PATH or several as models: [{{name: "
                             "NAME, model: PATH, trained_on: clean|rain}, ...]" + (", not both" if ds.models else ""))
        for tm in ds.models:
            check_name(tm.name, f"dataset {ds.name!r}: task model name")
            if tm.trained_on not in TRAINED_ON:
                raise ValueError(f"dataset {ds.name!r}: task model {tm.name!r}: trained_on must be one of "
                                 f"{', '.join(TRAINED_ON)}, got {tm.trained_on!r}")
        names = [tm.name for tm in ds.models]
        if len(set(names)) < len(names):
            raise ValueError(f"dataset {ds.name!r}: task model names must be unique, got {names}")
        if ds.real_rain and ds.rainy:
            raise ValueError(f"dataset {ds.name!r}: a real-rain dataset (real_rain) has no clean images to pair with "
                             "pre-rained copies (rainy)")
    for d in cfg.derainers:
        check_name(d.name, "derainer name")
        known = {tm.name for ds in cfg.datasets for tm in ds.task_models}
        if d.tuned_with is not None and d.tuned_with not in known:
            raise ValueError(f"derainer {d.name!r}: tuned_with {d.tuned_with!r} names no task model of the datasets "
                             f"(their task models: {', '.join(sorted(known))})")
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
        if ds.format == "bdd100k" and not ds.real_rain:
            from downstream.bdd100k import selects_rain

            if selects_rain(ds.path):  # else real rain is scored as "clean", with synthetic rain on top
                raise ValueError(f"dataset {ds.name!r}: where selects rainy frames (weather: rainy), which are real "
                                 "rain: set real_rain: NAME (their rows' severity), and keep the clear frames in "
                                 "another dataset")
        for tm in ds.task_models:
            if not Path(tm.model).exists() and not str(tm.model).endswith((".yaml", ".yml")):
                raise FileNotFoundError(
                    f"dataset {ds.name!r}: task model not found: {tm.model}. Supply {task.model_help} (e.g. trained "
                    "with `derainbench train-task`); nothing is ever downloaded."
                )
    keys = [c.key for ds in cfg.datasets for c in plan(cfg, ds.name)]
    if len(set(keys)) < len(keys):
        clash = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"cells {clash[:3]} would share a file: rename the derainer or task model whose name "
                         "contains '__on-' or '__r'")


SUMMARY_SEVERITY = "mean"  # the ``severity`` of robustness rows (averages over the run's rain severities)
