"""The benchmark runner: clean / rainy / derained images -> task model -> mAP or mIoU, per method × severity.

Every (dataset, severity, method) *cell* is computed in memory (rain synthesized with the run seed and the
image's name, exactly as ``derainbench synth`` would write it, then quantized to 8 bits like a PNG; derained
tensors go straight into the task model) and saved atomically to ``cells/`` when finished, so a crash or
Ctrl-C loses at most the cell in progress and a rerun skips finished cells. ``results.csv`` (tidy rows:
dataset, task, severity, method, metric, value), ``per_image.csv``, ``summary.csv`` (drop and recovery),
``per_class.csv`` (AP / IoU per class), ``predictions/`` (COCO result JSON), ``samples/`` and ``timings.json``
are rebuilt from the cells; ``environment.json`` records the device and package versions of the last invocation.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import glob
import hashlib
import io
import json
import math
import platform
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from derain.checkpoint import (
    WEIGHTS_FILE,
    file_sha256,
    folder_lock,
    is_checkpoint,
    load_derainer,
    read_meta,
    update_hash,
)
from derain.config import check_name, save_config
from derain.fileio import atomic_write_text, to_jsonable
from derain.imageio import is_image_file, quantize_uint8, read_image, to_tensor, walk_files, write_image
from derain.inference import DEFAULT_STAT_PASSES, NonFiniteOutputError, derain_tensor
from derain.metrics import compute_metrics
from derain.registry import list_models, model_options
from derain.runtime import (
    DistInfo,
    InferencePolicy,
    barrier,
    cleanup_distributed,
    inference_policy,
    init_distributed,
    resolve_device,
)
from derain.synth import PRESETS, image_seed, synthesize
from downstream.tasks import get_task, load_task_dataset


def task_metrics(task: str) -> tuple[str, ...]:
    """The dataset metrics ``task`` reports in results.csv (the first is its headline)."""
    return get_task(task).metric_keys()


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


class CellsFailedError(RuntimeError):
    """Some cells could not be scored (e.g. a derainer returned NaN); the rest of the run is written."""


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


def cell_fingerprint(cfg: BenchConfig, spec: DatasetSpec, cell: Cell, dspec: DerainerSpec | None,
                     hashes: dict[str, str], data: OpenedDataset | None = None) -> str:
    """A digest of everything that determines a cell's numbers (:func:`cell_inputs`): a finished cell whose digest
    differs is recomputed, so neither a config edited between runs nor edited data leave stale numbers behind."""
    return _digest(cell_inputs(cfg, spec, cell, dspec, hashes, data))


def cell_inputs(cfg: BenchConfig, spec: DatasetSpec, cell: Cell, dspec: DerainerSpec | None,
                hashes: dict[str, str], data: OpenedDataset | None = None) -> dict[str, str]:
    """A digest per part of what determines a cell's numbers (:data:`INPUT_PARTS`): the dataset spec, the content
    of the files the cell reads (``data``: images, labels, class names, a rain source's files), the task model's
    weights, the rain (preset parameters, seed and synthesizer code, or the source), the derainer spec and its
    weights' content, the task's scoring options (a detector's thresholds), whether intervals are kept and the
    scoring code. Cell files keep them, so a rerun says which part changed (``hashes`` caches file digests)."""
    from dataclasses import asdict

    from eval.image_cache import synthesizer_digest

    rain: Any = None
    if cell.severity in PRESETS and not spec.real_rain:  # the synthesizer's code too: a new one makes other rain
        rain = {"preset": asdict(PRESETS[cell.severity]), "seed": cfg.seed + cell.rep,
                "synthesizer": synthesizer_digest()}
    elif cell.severity != "none":
        rain = next((asdict(src) for src in spec.rainy if src.name == cell.severity), spec.real_rain)
        if data is not None and cell.severity in data.source_files:
            rain = {"source": rain, "files": _digest(data.source_files[cell.severity])}
    parts = {
        "dataset": asdict(spec),  # asdict recurses into the rain sources
        "data_files": None,  # below: the digest naming its manifest (see _save_manifest)
        "task_model": _content_digest(spec.model, hashes),
        "rain": rain,
        "derainer": None if dspec is None else [dspec.name, derainer_digest(dspec, hashes, cfg.derain_amp)],
        "scoring_options": {k: getattr(cfg, k) for k in get_task(spec.task).scoring_options} or None,
        "intervals": cfg.bootstrap > 0,
        "scoring_code": scoring_code_digest(spec.task),
    }
    digests = {k: _digest(v) for k, v in parts.items()}
    if data is not None:
        digests["data_files"] = data.digest
    return digests


INPUT_PARTS = {"dataset": "dataset settings", "data_files": "dataset files", "task_model": "task model",
               "rain": "rain", "derainer": "derainer", "scoring_options": "scoring options (conf, iou)",
               "intervals": "bootstrap on/off", "scoring_code": "scoring code"}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


class OpenedDataset(NamedTuple):
    """A dataset as its cells read it: the first ``n`` images, each rain source's file per image, and the content
    digest of every file read (``files``: path -> sha256 prefix, None for a label file that does not exist)."""

    dataset: Any
    n: int
    sources: dict[str, list[Path]]
    files: dict[str, str | None]
    source_files: dict[str, dict[str, str | None]]

    @property
    def digest(self) -> str:
        return _digest({"names": list(self.dataset.names), "files": self.files})


def open_dataset(spec: DatasetSpec, hashes: dict[str, str]) -> OpenedDataset:
    """Open ``spec``'s dataset (every label validated), match its rain sources and digest the files its cells read.

    Content digests, not sizes and times: on the demo's 50 validation scenes (101 files, 2.4 MB) sha256 takes 3 ms
    against 0.2 ms for stat (a bench takes minutes); sha256 runs at about 1.8 GB/s here, so COCO val2017 (788 MB)
    costs about half a second from the page cache. A copied or re-checked-out dataset (new times, same bytes)
    keeps its cells; an edit that keeps size and time does not."""
    dataset = load_task_dataset(spec.task, spec.format, spec.path, spec.split)
    n = len(dataset) if spec.limit is None else min(spec.limit, len(dataset))
    if n == 0:
        raise ValueError(f"dataset {spec.name!r} ({spec.path}) has no images")
    sources = {src.name: match_rain_source(src, dataset, n) for src in spec.rainy}
    if hasattr(dataset, "files"):
        files = list(dataset.files(n))
    else:
        warnings.warn(f"dataset {spec.name!r}: {type(dataset).__name__} does not list its files (files(n)); only its "
                      "images are fingerprinted, so edited labels are not noticed by a rerun", stacklevel=2)
        files = [Path(dataset.image_path(i)) for i in range(n)]
    return OpenedDataset(dataset, n, sources, _file_digests(files, hashes),
                         {name: _file_digests(paths, hashes) for name, paths in sources.items()})


def _file_digests(files: Sequence[Path], hashes: dict[str, str]) -> dict[str, str | None]:
    """``{path: sha256 prefix of its bytes}`` (None for a file that does not exist); ``hashes`` caches them."""
    out: dict[str, str | None] = {}
    for f in files:
        key = f"file:{Path(f).resolve()}"
        if key not in hashes and Path(f).is_file():
            hashes[key] = file_sha256(f)[:16]
        out[str(f)] = hashes.get(key)
    return out


def check_out_folder(out: Path, opened: dict[str, OpenedDataset]) -> None:
    """Refuse an ``out`` inside a dataset's image folder: the next run would read its cache and samples as images."""
    real = out.resolve()
    for name, data in opened.items():
        images = Path(data.dataset.images_dir).resolve()
        if real == images or images in real.parents:
            raise ValueError(f"out {out} lies inside the images of dataset {name!r} ({images}): its cache and sample "
                             "images would be read as dataset images; choose an out outside it")


SCORING_MODULES = ("derain.metrics", "downstream.metrics", "eval.bootstrap")


@functools.cache
def scoring_code_digest(task: str) -> str:
    """Digest of the source of the modules that turn images into numbers for ``task`` (its module: task-model
    inference; COCO mAP, mIoU; PSNR/SSIM; bootstrap statistics): cells scored by another version are recomputed."""
    import importlib

    h = hashlib.sha256()
    for name in (*SCORING_MODULES, type(get_task(task)).__module__):
        h.update(name.encode() + Path(importlib.import_module(name).__file__ or "").read_bytes())
    return h.hexdigest()[:16]


def derainer_digest(dspec: DerainerSpec, hashes: dict[str, str], amp: bool = False) -> str:
    """A digest of what determines a derainer's output (architecture or checkpoint, weights' content, options,
    tiling; not its name), and that outputs are scored on the 8-bit grid: the derain cache's folder name."""
    from dataclasses import asdict

    untiled = ("overlap", "stat_passes") if dspec.tile is None else ()  # without tiles they change nothing
    parts = {k: v for k, v in asdict(dspec).items() if k != "name" and k not in untiled}
    if amp:  # autocast outputs are other outputs (absent otherwise, so fp32 digests stay as they were)
        parts["amp"] = True
    parts.update(content=_content_digest(dspec.weights or dspec.model, hashes), output="uint8")
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _content_digest(path: Any, hashes: dict[str, str]) -> str | None:
    """sha256 of a weights file, or of the files of a checkpoint folder; None for names (registered models,
    model .yaml configs)."""
    p = Path(str(path))
    key = str(p.resolve()) if p.exists() else str(path)
    if key in hashes:
        return hashes[key]
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    else:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(p if p.is_dir() else p.parent).as_posix().encode())
        update_hash(h, f)
    hashes[key] = h.hexdigest()
    return hashes[key]


def _stale(path: Path, fingerprint: str, inputs: dict[str, str]) -> str | None:
    """None when the finished cell file was computed from these inputs, else why it was not (the parts that
    changed: "derainer", "dataset files"...)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "unreadable cell file"
    if data.get("fingerprint") == fingerprint:
        return None
    old = data.get("inputs")
    if not isinstance(old, dict):
        return "scored before cells recorded their inputs (dataset files were not fingerprinted)"
    return ", ".join(text for k, text in INPUT_PARTS.items() if old.get(k) != inputs.get(k)) or "fingerprint"


def _changed_files(out: Path, name: str, old_digest: str | None, files: dict[str, str | None]) -> str:
    """Which of a dataset's files changed since the run whose data digest was ``old_digest`` (its manifest under
    ``<out>/inputs``), as "2 changed: masks/a.png, masks/b.png under data/val"; empty when that manifest is gone."""
    import os

    try:
        old = json.loads((out / "inputs" / f"{name}.{old_digest}.json").read_text())["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return ""
    keys = [*old, *files]
    try:
        root = os.path.commonpath(keys) if len(keys) > 1 else os.path.dirname(keys[0])
    except ValueError:
        root = ""
    parts = []
    for what, paths in (("changed", [k for k in files if k in old and old[k] != files[k]]),
                        ("added", [k for k in files if k not in old]), ("removed", [k for k in old if k not in files])):
        if paths:
            shown = [os.path.relpath(p, root) if root else p for p in paths[:5]]
            parts.append(f"{len(paths)} {what}: {', '.join(shown)}{' ...' if len(paths) > 5 else ''}")
    return f"{'; '.join(parts)}{f' under {root}' if root and parts else ''}"


def _save_manifest(out: Path, name: str, data: OpenedDataset, keep: set[str]) -> None:
    """Keep ``data``'s file digests under ``<out>/inputs`` (how a later run names the files that changed); drop the
    manifests of this dataset no cell refers to (``keep``: their data digests)."""
    folder = out / "inputs"
    path = folder / f"{name}.{data.digest}.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"dataset": name, "files": data.files}, indent=0))
    for old in folder.glob(f"{name}.*.json"):
        if old.name.removeprefix(f"{name}.").removesuffix(".json") not in keep | {data.digest}:
            old.unlink(missing_ok=True)


def match_rain_source(source: RainSource, dataset: Any, n: int) -> list[Path]:
    """The rainy file of each of the first ``n`` labelled images (same stem, any image extension).

    ``source.path`` is the rained copy of the dataset's image folder or of a folder above it (the dataset root that
    ``derainbench synth --with-labels DATA DATA-rainy`` copies, say): image ``<images_dir>/REL`` is looked up at
    ``path/TAIL/REL`` for every TAIL ending ``images_dir`` (none: ``path/REL``, the image folder's copy; then its
    last folder, last two, ...; e.g. ``images/val2017/REL`` in a COCO root's copy). The one TAIL under which any
    labelled image has a rainy file is used; two such TAILs (the folder holds copies at two levels) are ambiguous
    and refused naming both, none is refused too, as is a folder that is the clean image folder itself. Under the
    TAIL used, a DatasetError lists every labelled image without a rainy file."""
    from downstream.datasets import DatasetError

    root = Path(source.path)
    if source.raincityscapes is not None:
        from downstream.raincityscapes import match_raincityscapes

        return match_raincityscapes(source.name, root, source.raincityscapes, dataset, n)
    if not root.is_dir():
        raise FileNotFoundError(f"rain source {source.name!r}: folder not found: {root}")
    files: dict[str, list[Path]] = {}
    for f in walk_files(root):
        if is_image_file(f):
            files.setdefault(f.relative_to(root).with_suffix("").as_posix(), []).append(f)
    images_dir = Path(dataset.images_dir)
    rels = [Path(dataset.image_path(i)).relative_to(images_dir).with_suffix("").as_posix() for i in range(n)]
    tails = _image_folder_tails(images_dir)
    found = [t for t in tails if any(_under(t, rel) in files for rel in rels)]
    what = f"rain source {source.name!r} ({root})"
    if len(found) > 1:
        a, b = (root / t if t else root for t in found[:2])
        raise DatasetError(f"{what} is ambiguous: it holds rainy copies of the labelled images of {images_dir} both "
                           f"in {a} and in {b}; point rainy: at the one meant, or remove the other")
    if not found:
        example = " or ".join(str(root / _under(t, rels[0])) for t in tails[:3:2])
        raise DatasetError(f"{what} does not match the labelled images of {images_dir}: none of the {n} has a rainy "
                           f"file in it as a copy of the image folder or of a folder above it (e.g. {example}, any "
                           f"image extension)" + ("" if files else "; it holds no image files"))
    tail = found[0]
    folder = root / tail if tail else root
    if folder.resolve() == images_dir.resolve():
        raise DatasetError(f"{what} is the dataset's own image folder {images_dir} (clean images), not a rainy copy")
    out, missing, ambiguous = [], [], []
    for rel in rels:
        hits = files.get(_under(tail, rel), [])
        if len(hits) == 1:
            out.append(hits[0])
        else:
            (missing if not hits else ambiguous).append(rel)
    if missing or ambiguous:
        parts = [f"{what} does not match the labelled images of {images_dir}"
                 + (f" (the copy of it in {folder}):" if tail else ":")]
        if missing:
            parts.append(f"{len(missing)} without a rainy file (same relative path, any image extension): "
                         + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        if ambiguous:
            parts.append(f"{len(ambiguous)} with several rainy files of other extensions: " + ", ".join(ambiguous[:10]))
        raise DatasetError(" ".join(parts))
    return out


def _image_folder_tails(images_dir: Path) -> list[str]:
    """``""`` and the trailing sub-paths of ``images_dir`` (``val2017``, ``images/val2017``, ...), shortest first, up
    to its anchor or a ``..``: where a rained copy of the image folder or of a folder above it keeps the images."""
    parts = images_dir.absolute().parts
    tails = [""]
    for k in range(1, len(parts)):
        part = parts[-k]
        if part == ".." or Path(part).anchor:
            break
        tails.append("/".join(parts[-k:]))
    return tails


def _under(tail: str, rel: str) -> str:
    return f"{tail}/{rel}" if tail else rel


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


def run_bench(cfg: BenchConfig, force: bool = False, progress: bool = True) -> Path:
    """Run every missing cell of ``cfg`` and rebuild the result files; returns the output folder.

    Under ``torchrun`` the images of each cell are sharded over the ranks and gathered on rank 0, which alone
    writes files; the results equal a single-process run.
    """
    validate(cfg)
    out = Path(cfg.out)
    hashes: dict[str, str] = {}
    opened = {spec.name: open_dataset(spec, hashes) for spec in cfg.datasets}  # labels checked before any cell
    check_out_folder(out, opened)
    dist = init_distributed(cfg.device)
    try:
        with folder_lock(out, "derainbench bench") if dist.is_main else contextlib.nullcontext():
            _run_cells(cfg, out, dist, force, progress, opened, hashes)
    finally:
        cleanup_distributed(dist)
    return out


def _run_cells(cfg: BenchConfig, out: Path, dist: DistInfo, force: bool, progress: bool,
               opened: dict[str, OpenedDataset], hashes: dict[str, str]) -> None:
    """Score the missing or stale cells of every dataset (``opened``), then rebuild the result files (rank 0)."""
    if dist.is_main:
        (out / "cells").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    device = resolve_device(cfg.device, dist.local_rank if dist.enabled else None)
    if dist.is_main:
        atomic_write_text(out / "environment.json", json.dumps(environment(device, dist), indent=1))
    rt = Runtime.of(cfg, device, out)
    rt.hashes = hashes
    derainers: dict[str, torch.nn.Module] = {}  # loaded once, shared by every dataset
    failed: list[str] = []  # cells whose derainer output was not finite (never scored, retried by a rerun)
    for spec in cfg.datasets:
        data = opened[spec.name]
        dataset, n, sources = data.dataset, data.n, data.sources
        todo, stale = [], {}
        for c, d in conditions(cfg, spec.name):
            inputs = cell_inputs(cfg, spec, c, d, hashes, data)
            path, fp = out / "cells" / f"{c.key}.json", _digest(inputs)
            if force or not path.is_file():
                todo.append((c, d, fp, inputs))
            elif why := _stale(path, fp, inputs):
                todo.append((c, d, fp, inputs))
                stale[c.key] = why
        if stale and dist.is_main:
            _log_stale(out, spec.name, stale, data)
        barrier(dist)  # every rank has decided what to do before rank 0 writes the next cell
        if not todo:
            continue
        if dist.is_main:
            _save_manifest(out, spec.name, data, _data_digests(out, cfg, spec.name))
        task_model = _load_task_model(spec, dataset, device, rt.policy.channels_last)
        for cell, dspec, fingerprint, inputs in todo:
            if dspec is not None and dspec.name not in derainers:
                derainers[dspec.name] = _load_derainer(dspec, device)
                if dist.is_main:
                    record_derainer(out, dspec, derainers[dspec.name], hashes)
            try:
                result = _run_cell(cfg, spec, cell, dataset, n, task_model, derainers.get(cell.method), dspec, rt,
                                   out, progress and dist.is_main, dist, sources.get(cell.severity))
            except NonFiniteOutputError as exc:
                if dist.enabled:  # ranks may disagree on which images fail: stop all rather than wait on each other
                    raise
                failed.append(f"{cell.key}: {exc}")
                print(f"bench: cell {cell.key} failed, not scored: {exc}")
                continue
            if dist.is_main:
                result["fingerprint"], result["inputs"] = fingerprint, inputs
                atomic_write_text(out / "cells" / f"{cell.key}.json", json.dumps(result, indent=1))
    if dist.is_main:
        write_results(out, cfg)
    barrier(dist)
    if failed:
        raise CellsFailedError(f"{len(failed)} cell(s) failed and were not scored (the other results are written): "
                               + "; ".join(failed[:3]) + (" ..." if len(failed) > 3 else ""))


def _data_digests(out: Path, cfg: BenchConfig, dataset: str) -> set[str]:
    """The data digests the finished cells of ``dataset`` were scored with (whose manifests are kept)."""
    keep = set()
    for cell, _ in conditions(cfg, dataset):
        with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
            keep.add(json.loads((out / "cells" / f"{cell.key}.json").read_text()).get("inputs", {}).get("data_files"))
    return {k for k in keep if isinstance(k, str)}


def _log_stale(out: Path, name: str, stale: dict[str, str], data: OpenedDataset) -> None:
    """Say which finished cells are recomputed and why (the inputs that changed; edited files by name)."""
    print(f"bench: recomputing {len(stale)} finished cell(s) of dataset {name!r} whose inputs changed since they "
          "were scored:")
    groups: dict[str, list[str]] = {}
    for key, why in stale.items():
        groups.setdefault(why, []).append(key)
    for why, keys in groups.items():
        detail = ""
        if "dataset files" in why:
            old = _cell_inputs_of(out / "cells" / f"{keys[0]}.json").get("data_files")
            detail = _changed_files(out, name, old, data.files)
        print(f"  {why}{f' ({detail})' if detail else ''}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")


def _cell_inputs_of(path: Path) -> dict[str, Any]:
    try:
        inputs = json.loads(path.read_text()).get("inputs")
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    return inputs if isinstance(inputs, dict) else {}


def environment(device: torch.device, dist: DistInfo) -> dict[str, Any]:
    """The device and package versions a run used, so a report can state what produced its numbers."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("derainbench", "torch", "torchvision", "ultralytics", "segmentation-models-pytorch", "pycocotools",
                 "numpy", "spandrel", "spandrel-extra-arches"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": str(device), "device_name": name, "processes": dist.world_size,
            "python": platform.python_version(), "platform": platform.platform(), "packages": packages}


def _load_task_model(spec: DatasetSpec, dataset: Any, device: torch.device, channels_last: bool = False) -> Any:
    """The dataset's task model made ready for scoring (YOLO: Conv+BN fused), its weights in NHWC when
    ``channels_last`` (the convs then run NHWC on NCHW inputs; measured 1.8x (YOLO11n) and 3x (U-Net) faster at
    160 px on 2 CPU cores)."""
    task = get_task(spec.task)
    try:
        model = task.load_model(spec.model, dataset.names, device=device)
    except ValueError as exc:
        raise ValueError(f"dataset {spec.name!r}: {exc}") from exc
    return task.for_inference(model, channels_last)


def _load_derainer(spec: DerainerSpec, device: torch.device) -> torch.nn.Module:
    return load_derainer(spec.model, spec.weights, **spec.options).to(device)


DERAINERS_FILE = "derainers.json"


def describe_derainer(spec: DerainerSpec, model: torch.nn.Module, hashes: dict[str, str]) -> dict[str, Any]:
    """What a report says of a derainer: its architecture, parameter count, the sha256 of its weights (file or
    checkpoint folder), and for zoo architectures the paper and the licence of the original code."""
    name = getattr(model, "derain_name", type(model).__name__)
    zoo_arch = getattr(model, "zoo_arch", None)
    info: dict[str, Any] = {
        "architecture": f"{zoo_arch} (zoo)" if zoo_arch else name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_sha256": _weights_sha256(Path(spec.weights or spec.model), hashes),
    }
    facts = getattr(model, "zoo_facts", None)
    if facts is not None:
        info.update(paper=facts.paper, year=facts.year, licence=facts.licence, non_commercial=facts.non_commercial)
    return info


def _weights_sha256(path: Path, hashes: dict[str, str]) -> str | None:
    """sha256 of a weights file (what ``sha256sum`` prints), or of a checkpoint folder's ``model.safetensors``; None
    for registered names without weights."""
    if path.is_dir() and is_checkpoint(path):
        path = path / WEIGHTS_FILE
    if not path.is_file():
        return None
    key = f"sha256:{path.resolve()}"
    if key not in hashes:
        hashes[key] = file_sha256(path)
    return hashes[key]


def record_derainer(out: Path, spec: DerainerSpec, model: torch.nn.Module, hashes: dict[str, str]) -> None:
    """Add ``spec``'s :func:`describe_derainer` to ``<out>/derainers.json`` (by derainer name)."""
    path = out / DERAINERS_FILE
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        known = {}  # a damaged record is rewritten from the derainers loaded now
    known[spec.name] = describe_derainer(spec, model, hashes)
    atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True))


def rainy_image(clean: np.ndarray, severity: str, seed: int, name: str) -> np.ndarray:
    """The rainy version of ``clean`` that ``derainbench synth --seed seed`` writes for file ``name`` (8-bit)."""
    rainy, _ = synthesize(clean, severity, seed=image_seed(seed, name))
    return quantize_uint8(rainy).astype(np.float32) / 255.0


class CellItem(NamedTuple):
    """One image of a cell, as the DataLoader hands it over."""

    index: int
    name: str  # file name (rain seeds and sample files use it)
    image: np.ndarray  # the clean (or real-rain) image, H×W×3 float32 in [0, 1]
    label: Any
    x: torch.Tensor | None  # the task model's (or derainer's) input, 3×H×W; None when ``derained`` was cached
    key: str | None  # the input's cache key (None: caching off)
    derained: torch.Tensor | None  # the cached derainer output, 3×H×W on the 8-bit grid


class CellInputs(torch.utils.data.Dataset):
    """The images one cell scores, prepared in DataLoader workers while the models run.

    The input is the clean image (severity none, or a real-rain dataset's own image), the file of a rain source
    (``rainy_files``), or rain synthesized with the preset and ``seed`` and quantized to 8 bits. With a cache
    (``cache_root``), synthesized rain is read from it when another cell made it, and for a derainer cell
    (``derainer``: its digest) so is the derained image, in which case the rain is not even made."""

    def __init__(self, dataset: Any, indices: Sequence[int], severity: str, seed: int, clean: bool,
                 rainy_files: list[Path] | None, cache_root: Path | None, derainer: str | None) -> None:
        self.dataset, self.indices, self.severity, self.seed = dataset, list(indices), severity, seed
        self.clean, self.rainy_files, self.cache_root, self.derainer = clean, rainy_files, cache_root, derainer

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> CellItem:
        from eval.image_cache import ImageCache, input_digest, rain_key

        i = self.indices[k]
        image, label = self.dataset[i]
        name = Path(self.dataset.image_path(i)).name
        caching = self.cache_root is not None
        x: torch.Tensor | None = None
        if self.clean:
            x = to_tensor(image)
        elif self.rainy_files is not None:
            x = _read_source_image(self.rainy_files[i], self.dataset.image_path(i), image.shape)[0]
        key = None if not caching else input_digest(x) if x is not None else rain_key(
            image, self.severity, self.seed, name)
        derained = None
        if key is not None and self.derainer is not None:
            derained = ImageCache(self.cache_root, f"derained/{self.derainer}").get(key)
        if x is None and derained is None:
            rain = ImageCache(self.cache_root, "rainy")
            x = rain.get(key) if key is not None else None
            if x is None:
                x = to_tensor(rainy_image(image, self.severity, self.seed, name))
                if key is not None:
                    rain.put(key, x)
        return CellItem(i, name, image, label, x, key, derained)


def _as_is(item: Any) -> Any:
    """DataLoader collate for single items: keep numpy labels as they are (no tensor conversion)."""
    return item


@dataclass
class Runtime:
    """How cells run (not what they compute): device, task-model batch, the derainers' inference policy (layout,
    batch), loader workers, cache."""

    device: torch.device
    batch: int
    policy: InferencePolicy
    workers: int
    cache_root: Path | None
    compile: bool | None = None  # derain_compile as configured (None: each derainer's policy default)
    amp: bool = False  # derain_amp as configured
    hashes: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # restoration scores shared by tasks

    def derainer_policy(self, derainer: torch.nn.Module) -> InferencePolicy:
        """The inference policy for ``derainer`` on this device, with the run's configured overrides."""
        return inference_policy(self.device, model=derainer, channels_last=self.policy.channels_last,
                                batch_size=self.policy.batch_size, compile=self.compile, amp=self.amp)

    @classmethod
    def of(cls, cfg: BenchConfig, device: torch.device, out: Path) -> Runtime:
        policy = inference_policy(device, channels_last=cfg.channels_last, batch_size=cfg.derain_batch)
        return cls(device=device, batch=cfg.batch or 8, policy=policy, compile=cfg.derain_compile, amp=cfg.derain_amp,
                   workers=default_workers() if cfg.workers is None else cfg.workers,
                   cache_root=out / "cache" if cfg.cache else None)


def default_workers() -> int:
    """DataLoader workers for image reading and rain synthesis: half the CPU cores, at most 4; none on a machine of
    two cores or fewer, where a worker only takes a core from the models (measured: 34 s vs 28 s for the demo
    bench on 2 cores)."""
    import os

    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)


def _batches(loader: Any, size: int) -> Any:
    """Consecutive items of equal image size, ``size`` at a time (a size change flushes the batch)."""
    batch: list[CellItem] = []
    for item in loader:
        if batch and (len(batch) == size or batch[0].image.shape != item.image.shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _derain_batch(derainer: torch.nn.Module, dspec: DerainerSpec, batch: list[CellItem], cache: Any,
                  rt: Runtime) -> list[torch.Tensor]:
    """Derained, 8-bit-quantized versions of the batch's inputs: cached ones as read, the rest computed in one
    call and stored."""
    from eval.image_cache import quantize

    out = [b.derained for b in batch]
    todo = [j for j, y in enumerate(out) if y is None]
    if todo:
        size = batch[0].image.shape[:2] if dspec.tile is None else (dspec.tile, dspec.tile)  # images or tiles per call
        policy = rt.derainer_policy(derainer)
        y = derain_tensor(derainer, torch.stack([batch[j].x for j in todo]), tile=dspec.tile, overlap=dspec.overlap,
                          stat_passes=dspec.stat_passes, batch_size=policy.batch(*size),
                          channels_last=policy.channels_last, compile=policy.compile, amp=policy.amp)
        for j, img in zip(todo, quantize(y.cpu()), strict=True):
            out[j] = img
            if batch[j].key is not None:
                cache.put(batch[j].key, img)
    return out


def _restoration_scores(y: torch.Tensor, clean: np.ndarray, key: str | None, rt: Runtime) -> dict[str, float]:
    """PSNR-Y / SSIM-Y of ``y`` (3×H×W) against ``clean`` (H×W×3), computed once per run for the same image and
    condition (``key``: the input's cache key and the derainer's digest), so a second task reuses them."""
    from eval.image_cache import input_digest

    full = None if key is None else f"{key}:{input_digest(clean)}"
    if full is None or full not in rt.scores:
        scores = compute_metrics(y[None], to_tensor(clean)[None])
        value = {"psnr_y": float(scores["psnr_y"]), "ssim_y": float(scores["ssim_y"])}
        if full is None:
            return value
        rt.scores[full] = value
    return dict(rt.scores[full])


def _run_cell(cfg: BenchConfig, spec: DatasetSpec, cell: Cell, dataset: Any, n: int, task_model: Any,
              derainer: torch.nn.Module | None, dspec: DerainerSpec | None, rt: Runtime, out: Path,
              progress: bool, dist: DistInfo, rainy_files: list[Path] | None = None) -> dict[str, Any]:
    """Score one (dataset, severity, method) on this rank's share of the images; rank 0 gets the totals.

    Images are read (and rain synthesized) by DataLoader workers while the models run; derainer outputs come from
    the run's derain cache when another cell (another task, another dataset with the same pixels) already made
    them, and are scored as 8-bit images either way."""
    from eval.image_cache import ImageCache

    t0 = time.perf_counter()
    task = get_task(spec.task)
    clean_input = cell.severity == "none" or bool(spec.real_rain)
    digest = derainer_digest(dspec, rt.hashes, rt.amp) if dspec is not None else None
    cache = ImageCache(rt.cache_root if digest else None, f"derained/{digest}")
    inputs = CellInputs(dataset, range(dist.rank, n, dist.world_size), cell.severity, cfg.seed + cell.rep, clean_input,
                        rainy_files, rt.cache_root, digest)
    loader = torch.utils.data.DataLoader(inputs, batch_size=None, collate_fn=_as_is, num_workers=rt.workers,
                                         prefetch_factor=4 if rt.workers else None)
    items: list[tuple[int, dict[str, Any], Any, Any]] = []  # (index, per-image row, prediction, label)
    bar = tqdm(total=len(inputs), desc=f"{cell.dataset} {cell.severity} {cell.method}", disable=not progress,
               leave=False)
    hits = 0
    for batch in _batches(loader, rt.batch):
        if derainer is not None:
            hits += sum(b.derained is not None for b in batch)
            xs = _derain_batch(derainer, dspec, batch, cache, rt)
        else:
            xs = [b.x for b in batch]
        x = torch.stack(xs).to(rt.device)
        preds = task.predict(task_model, x, imgsz=spec.imgsz, conf=cfg.conf, iou=cfg.iou)
        for (i, name, image, label, _, key, _), y, pred in zip(batch, xs, preds, strict=True):
            row: dict[str, Any] = {"image": name}
            if not clean_input:  # no clean twin for real rain; the clean cell scores itself
                row.update(_restoration_scores(y, image, None if key is None else f"{digest}:{key}", rt))
            items.append((i, row, pred, label))
            if i < cfg.samples and cell.rep == 0:
                _save_sample(out, cell, task, name, y, pred, label)
        bar.update(len(batch))
    bar.close()
    items = _gather(items, dist)
    all_hits = _gather([hits], dist)
    if not dist.is_main:
        return {}
    items.sort(key=lambda item: item[0])
    evaluator = task.evaluator(dataset.names)
    for i, _, pred, label in items:
        evaluator.update([pred], [label], [i])
    metrics = evaluator.compute(image_stats=cfg.bootstrap > 0)
    image_stats = metrics.pop("image_stats", None)  # what the bootstrap resamples (see eval.bootstrap)
    if hasattr(evaluator, "results"):  # COCO-protocol tasks: the predictions as COCO result rows
        atomic_write_text(out / "predictions" / f"{cell.key}.json", json.dumps(evaluator.results()))
    per_image = [row for _, row, _, _ in items]
    restoration = {k: float(np.mean([r[k] for r in per_image])) for k in ("psnr_y", "ssim_y") if k in per_image[0]}
    result = {"cell": cell.__dict__, "task": spec.task, "n": n, "metrics": to_jsonable(metrics),
              "restoration": restoration, "per_image": per_image, "seconds": time.perf_counter() - t0}
    if derainer is not None:
        result["derain_cache_hits"] = int(sum(all_hits))
    if cfg.bootstrap > 0:
        result["image_stats"] = image_stats
    return result


def _read_source_image(path: Path, clean_path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """A rain source's image as ``1×3×H×W``; its size must be the labelled image's."""
    rainy = read_image(path)
    if rainy.shape != tuple(shape):
        raise ValueError(f"rainy image {path} is {rainy.shape[1]}×{rainy.shape[0]} but its labelled image {clean_path} "
                         f"is {shape[1]}×{shape[0]} (W×H): rain sources must keep the image size")
    return to_tensor(rainy)[None]


def _gather(items: list, dist: DistInfo) -> list:
    """All ranks' items on rank 0 (the input itself when not distributed)."""
    if not dist.enabled:
        return items
    import torch.distributed as tdist

    parts: list[Any] = [None] * dist.world_size if dist.is_main else []
    tdist.gather_object(items, parts if dist.is_main else None, dst=0)
    return [item for part in parts for item in part] if dist.is_main else []


def _save_sample(out: Path, cell: Cell, task: Any, name: str, image: torch.Tensor, pred: Any, label: Any) -> None:
    """For reports: the image the task model saw (PNG) and its prediction under ``samples/<dataset>/<severity>/
    <method>/``, and once per image its ground truth under ``samples/<dataset>/truth/`` (as the task saves them)."""
    folder = out / "samples" / cell.dataset / cell.severity / cell.method
    stem = Path(name).stem
    write_image(folder / f"{stem}.png", image)
    task.save_label(folder, stem, pred)
    truth = out / "samples" / cell.dataset / "truth"
    if not any(truth.glob(f"{glob.escape(stem)}.*")):  # a task's files start with the stem (Task.save_label)
        task.save_label(truth, stem, label)


RESULT_FIELDS = ["dataset", "task", "severity", "method", "metric", "value", "ci_low", "ci_high", "std", "seeds"]
CellKey = tuple[str, str, str, int]  # (dataset, severity, method, rain replicate)


def write_results(out: Path, cfg: BenchConfig) -> None:
    """Rebuild results.csv, per_seed.csv, per_image.csv, per_class.csv, summary.csv, differences.csv and
    timings.json from the finished cells.

    With ``rain_seeds`` > 1 every row of synthetic rain (and every robustness row) is the mean over the seeds of
    the row computed per seed, ``std`` its sample std over seeds and ``seeds`` their number (per_seed.csv has the
    per-seed values); rows that do not depend on the seed (clean images, rain sources) have ``seeds`` 1. With
    ``cfg.bootstrap`` every task metric, drop, gain and robustness row gets its 95 % paired-bootstrap interval
    (``ci_low``, ``ci_high``), resampling images and, with several seeds, the seeds too."""
    cells: dict[CellKey, dict[str, Any]] = {}
    image_rows, timings = [], {}
    for spec in cfg.datasets:
        for cell, _ in conditions(cfg, spec.name):
            path = out / "cells" / f"{cell.key}.json"
            if not path.is_file():
                continue
            data = json.loads(path.read_text())
            cells[(cell.dataset, cell.severity, cell.method, cell.rep)] = data
            base = {"dataset": cell.dataset, "task": data["task"], "severity": cell.severity, "method": cell.method,
                    "seed": cfg.seed + cell.rep if cell.severity in PRESETS else ""}
            image_rows += [{**base, **r} for r in data["per_image"]]
            timings[cell.key] = round(data["seconds"], 3)
    names = [d.name for d in cfg.derainers]
    rows, summary, differences, classes = [], [], [], []
    for rep in range(cfg.rain_seeds):
        view = _replicate(cells, rep)
        r_rows = [row for key, data in view.items() for row in _cell_rows(key, data)]
        r_summary = summarize(r_rows) + gain_rows(r_rows)
        rows.append(r_rows)
        summary.append(r_summary)
        differences.append(difference_rows(r_rows + r_summary, names))
        classes.append([row for data in view.values() for row in per_class_rows(data)])
    keys = ("dataset", "severity", "method", "metric")
    (rows, seed_rows), (summary, seed_summary) = _over_seeds(rows, keys, cfg), _over_seeds(summary, keys, cfg)
    differences, _ = _over_seeds(differences, (*keys, "versus"), cfg)
    classes, _ = _over_seeds(classes, ("dataset", "severity", "method", "class", "metric"), cfg)
    if cfg.bootstrap > 0:
        samples = bootstrap_samples(cells, cfg)
        views = [_replicate(samples, rep) for rep in range(cfg.rain_seeds)]
        draws = np.random.default_rng([cfg.seed, 2]).integers(0, cfg.rain_seeds, (cfg.bootstrap, cfg.rain_seeds))
        for row in rows + summary + differences:
            row["ci_low"], row["ci_high"] = _interval_of(row, views, draws)
    _write_csv(out / "results.csv", rows + summary, RESULT_FIELDS)
    _write_csv(out / "summary.csv", summary, RESULT_FIELDS)
    _write_csv(out / "per_seed.csv", seed_rows + seed_summary,
               ["dataset", "task", "severity", "method", "seed", "metric", "value"])
    _write_csv(out / "differences.csv", differences,
               ["dataset", "task", "severity", "method", "versus", "metric", "value", "ci_low", "ci_high", "std",
                "seeds"])
    _write_csv(out / "per_image.csv", image_rows,
               ["dataset", "task", "severity", "method", "seed", "image", "psnr_y", "ssim_y"])
    _write_csv(out / "per_class.csv", classes, ["dataset", "task", "severity", "method", "class", "metric", "value"])
    atomic_write_text(out / "timings.json", json.dumps(timings, indent=1))


def _replicate(table: dict[tuple, Any], rep: int) -> dict[tuple, Any]:
    """The entries of rain replicate ``rep`` with the replicate dropped from the key: ``(dataset, severity, method,
    rep, *rest) -> (dataset, severity, method, *rest)``; seed-independent cells (replicate 0 only) serve every
    replicate."""
    return {(k[0], k[1], k[2], *k[4:]): v for k, v in table.items() if k[3] == (rep if k[1] in PRESETS else 0)}


def _cell_rows(key: tuple[str, str, str], data: dict[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows (restoration and task metrics) of one cell."""
    base = {"dataset": key[0], "task": data["task"], "severity": key[1], "method": key[2]}
    values = {**data["restoration"], **{k: data["metrics"][k] for k in task_metrics(data["task"])}}
    return [{**base, "metric": k, "value": v} for k, v in values.items()]


def _over_seeds(per_rep: list[list[dict[str, Any]]], keys: Sequence[str],
                cfg: BenchConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows computed per rain replicate -> (one row per key: mean ``value``, ``std`` over seeds and ``seeds``;
    the per-seed rows of seed-dependent keys). Synthetic-rain rows and the robustness rows depend on the seed;
    clean and rain-source rows are the same in every replicate and count once."""
    groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
    for rep, rows in enumerate(per_rep):
        for row in rows:
            groups.setdefault(tuple(row[k] for k in keys), []).append((rep, row))
    merged, per_seed = [], []
    for items in groups.values():
        first = items[0][1]
        varies = first["severity"] in PRESETS or first["severity"] == SUMMARY_SEVERITY
        values = [_float(row["value"]) for _, row in items] if varies else [_float(first["value"])]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else ""
        merged.append({**first, "value": float(np.mean(values)), "std": std, "seeds": len(values)})
        if varies:
            per_seed += [{**row, "seed": cfg.seed + rep} for rep, row in items]
    return merged, per_seed


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def per_class_rows(cell: dict[str, Any]) -> list[dict[str, Any]]:
    """Tidy per-class rows of one cell JSON (the task's per-class metrics: ``ap``/``ap50`` for detection, ``iou``
    for segmentation, ...)."""
    base = {"dataset": cell["cell"]["dataset"], "task": cell["task"], "severity": cell["cell"]["severity"],
            "method": cell["cell"]["method"]}
    return [{**base, "class": name, "metric": spec.key, "value": value}
            for key, spec in get_task(cell["task"]).per_class.items()
            for name, value in cell["metrics"].get(key, {}).items()]


SUMMARY_SEVERITY = "mean"  # the ``severity`` of robustness rows (averages over the run's rain severities)


def gain_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``gain_<m>`` = derained − rainy per severity and task metric (the difference a recovery divides)."""
    value = {(r["dataset"], r["severity"], r["method"], r["metric"]): r["value"] for r in rows}
    out = []
    for r in rows:
        if r["severity"] == "none" or r["method"] == "rainy" or r["metric"] not in task_metrics(r["task"]):
            continue
        rainy = value.get((r["dataset"], r["severity"], "rainy", r["metric"]))
        if rainy is not None:
            out.append({**r, "metric": f"gain_{r['metric']}", "value": r["value"] - rainy})
    return out


def difference_rows(rows: list[dict[str, Any]], derainers: Sequence[str]) -> list[dict[str, Any]]:
    """``method − versus`` for every pair of derainers (config order), per severity and for the robustness mPC
    (severity ``mean``), for each task metric; ``differences.csv``."""
    value = {(r["dataset"], r["severity"], r["method"], r["metric"]): r for r in rows}
    out = []
    for (ds, sev, method, metric), r in value.items():
        base_metric = metric.removesuffix("_pc")
        if method not in derainers or base_metric not in task_metrics(r["task"]):
            continue
        if (sev == SUMMARY_SEVERITY) != metric.endswith("_pc"):
            continue
        for other in derainers[derainers.index(method) + 1:]:
            o = value.get((ds, sev, other, metric))
            if o is not None:
                out.append({"dataset": ds, "task": r["task"], "severity": sev, "method": method, "versus": other,
                            "metric": metric, "value": r["value"] - o["value"]})
    return out


def bootstrap_samples(cells: dict[CellKey, dict[str, Any]],
                      cfg: BenchConfig) -> dict[tuple[str, str, str, int, str], np.ndarray]:
    """Per (dataset, severity, method, replicate, metric): the metric on ``cfg.bootstrap`` resamples of the images,
    the same resamples for every cell of a dataset (paired); PSNR/SSIM too (means of per-image values)."""
    from eval.bootstrap import resample_weights, resampled_metrics

    out: dict[tuple[str, str, str, int, str], np.ndarray] = {}
    for ds in dict.fromkeys(k[0] for k in cells):
        mine = {k: v for k, v in cells.items() if k[0] == ds and "image_stats" in v}
        sizes = {len(v["per_image"]) for v in mine.values()}
        if len(sizes) != 1:
            continue  # cells scored on different image sets (e.g. a changed limit): no paired interval
        n = sizes.pop()
        weights = resample_weights(n, cfg.bootstrap, seed=[cfg.seed, zlib.crc32(ds.encode())])
        for key, data in mine.items():
            for metric, samples in resampled_metrics(data["image_stats"], weights).items():
                out[(*key, metric)] = samples
            for metric in ("psnr_y", "ssim_y"):
                if data["per_image"] and metric in data["per_image"][0]:
                    per = np.asarray([r[metric] for r in data["per_image"]], dtype=np.float64)
                    out[(*key, metric)] = weights @ per / n
    return out


def _interval_of(row: dict[str, Any], views: list[dict[tuple[str, str, str, str], np.ndarray]],
                 draws: np.ndarray) -> tuple[Any, Any]:
    """The 95 % paired-bootstrap interval of a results row ("", "" where none applies). ``views``: the samples of
    each rain replicate; with several, resample ``b`` averages the row over the replicates ``draws[b]`` (seeds drawn
    with replacement), so the interval covers the seed-to-seed spread as well as the images."""
    from eval.bootstrap import interval

    per = [_row_samples(row, v) for v in views]
    if any(p is None for p in per):
        return "", ""
    s = per[0] if len(per) == 1 else np.stack(per)[draws, np.arange(draws.shape[0])[:, None]].mean(axis=1)
    lo, hi = interval(s)
    return (lo, hi) if math.isfinite(lo) else ("", "")


def _row_samples(row: dict[str, Any], samples: dict[tuple[str, str, str, str], np.ndarray]) -> np.ndarray | None:
    ds, sev, method, metric = row["dataset"], row["severity"], row["method"], row["metric"]

    def get(s: str, m: str, k: str) -> np.ndarray | None:
        return samples.get((ds, s, m, k))

    def pc(m: str, k: str) -> np.ndarray | None:
        per = [get(s, m, k) for s in {key[1] for key in samples if key[0] == ds and key[1] in PRESETS}]
        return np.mean(per, axis=0) if per and all(p is not None for p in per) else None

    if "versus" in row:  # differences.csv
        k = metric.removesuffix("_pc")
        a, b = (pc(method, k), pc(row["versus"], k)) if sev == SUMMARY_SEVERITY else (get(sev, method, k),
                                                                                     get(sev, row["versus"], k))
        return None if a is None or b is None else a - b
    if sev == SUMMARY_SEVERITY:
        base, _, kind = metric.rpartition("_")
        if kind == "closed":
            base, kind = metric.removesuffix("_gap_closed"), "gap_closed"
        m_pc, clean = pc(method, base), get("none", "clean", base)
        if m_pc is None or clean is None:
            return None
        if kind == "pc":
            return m_pc
        if kind == "rpc":
            with np.errstate(invalid="ignore", divide="ignore"):
                return m_pc / clean
        r_pc = pc("rainy", base)
        if r_pc is None:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            return (m_pc - r_pc) / (clean - r_pc)
    if metric.startswith("drop_"):
        a, b = get("none", "clean", metric[5:]), get(sev, "rainy", metric[5:])
        return None if a is None or b is None else a - b
    if metric.startswith("gain_"):
        a, b = get(sev, method, metric[5:]), get(sev, "rainy", metric[5:])
        return None if a is None or b is None else a - b
    return get(sev, method, metric)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task metric m: ``drop_<m>`` = clean − rainy and ``recovery_<m>`` = (method − rainy) / (clean − rainy) per
    severity, then the robustness summary (:func:`robustness`) with severity ``mean``."""
    return _drop_recovery(rows) + robustness(rows)


def robustness(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The robustness-benchmark summary (Michaelis et al. 2019) per dataset, task metric m and method:

    ``<m>_pc`` = mPC, the metric averaged over the run's rain severities (levels 1–5 give the paper's mPC);
    ``<m>_rpc`` = rPC = mPC / P_clean; for derainers ``<m>_gap_closed`` = (mPC − mPC_rainy) / (P_clean −
    mPC_rainy), the share of the average clean-to-rainy gap the derainer closes (1 = all, 0 = none). A method
    missing any severity gets no row (a partial average would not compare).
    """
    value = {(r["dataset"], r["severity"], r["method"], r["metric"]): r["value"] for r in rows}
    tasks = {r["dataset"]: r["task"] for r in rows}
    out = []
    for ds, task in tasks.items():  # synthetic severities only: rain sources are not a severity ladder
        severities = sorted({k[1] for k in value if k[0] == ds and k[2] == "rainy" and k[1] in PRESETS})
        methods = list(dict.fromkeys(k[2] for k in value if k[0] == ds and k[1] != "none"))
        for metric in task_metrics(task):
            clean = value.get((ds, "none", "clean", metric))
            if clean is None or not severities:
                continue
            pcs = {}
            for method in methods:
                vals = [value.get((ds, sev, method, metric)) for sev in severities]
                if all(v is not None for v in vals):
                    pcs[method] = float(np.mean(vals))
            base = {"dataset": ds, "task": task, "severity": SUMMARY_SEVERITY}
            for method, pc in pcs.items():
                out.append({**base, "method": method, "metric": f"{metric}_pc", "value": pc})
                out.append({**base, "method": method, "metric": f"{metric}_rpc",
                            "value": pc / clean if clean else float("nan")})
                if method != "rainy" and "rainy" in pcs:
                    gap = clean - pcs["rainy"]
                    out.append({**base, "method": method, "metric": f"{metric}_gap_closed",
                                "value": (pc - pcs["rainy"]) / gap if gap else float("nan")})
    return out


def _drop_recovery(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    value = {(r["dataset"], r["severity"], r["method"], r["metric"]): r["value"] for r in rows}
    out = []
    for (ds, sev, method, metric), v in value.items():
        task = next(r["task"] for r in rows if r["dataset"] == ds)
        if sev == "none" or metric not in task_metrics(task):
            continue
        clean, rainy = value.get((ds, "none", "clean", metric)), value.get((ds, sev, "rainy", metric))
        if clean is None or rainy is None:
            continue
        base = {"dataset": ds, "task": task, "severity": sev, "method": method}
        if method == "rainy":
            out.append({**base, "metric": f"drop_{metric}", "value": clean - rainy})
        else:
            gap = clean - rainy
            out.append({**base, "metric": f"recovery_{metric}", "value": (v - rainy) / gap if gap else float("nan")})
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    """Write ``rows`` as CSV atomically; the temp name is unique per process, so two runs never collide."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
