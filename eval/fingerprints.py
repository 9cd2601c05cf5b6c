"""What determines a cell's numbers: opening a dataset and digesting the files its cells read, the digests of
task models, derainers and scoring code (:func:`cell_inputs` of a planned cell), and telling which finished cells
are stale and why."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from derain.checkpoint import file_sha256, update_hash
from derain.fileio import atomic_write_text
from derain.synth import PRESETS
from downstream.tasks import get_task, load_task_dataset
from eval.bench_config import BenchConfig, DatasetSpec, DerainerSpec, PlannedCell, plan
from eval.rain_sources import match_rain_source


def cell_fingerprint(cell: PlannedCell, hashes: dict[str, str]) -> str:
    """A digest of everything that determines a cell's numbers (:func:`cell_inputs`): a finished cell whose digest
    differs is recomputed, so neither a config edited between runs nor edited data leave stale numbers behind."""
    return _digest(cell_inputs(cell, hashes))


def cell_inputs(cell: PlannedCell, hashes: dict[str, str]) -> dict[str, str]:
    """A digest per part of what determines a cell's numbers (:data:`INPUT_PARTS`): the dataset spec, the content
    of the files the cell reads (``cell.data``: images, labels, class names, a rain source's files), the task model's
    weights, the rain (preset parameters, seed and synthesizer code, or the source), the derainer spec and its
    weights' content, the task's scoring options (a detector's thresholds), whether intervals are kept and the
    scoring code. Cell files keep them, so a rerun says which part changed (``hashes`` caches file digests)."""
    from dataclasses import asdict

    from eval.image_cache import synthesizer_digest

    spec, severity, data, scoring = cell.dataset, cell.cell.severity, cell.data, cell.scoring
    rain: Any = None
    if severity in PRESETS and not spec.real_rain:  # the synthesizer's code too: a new one makes other rain
        rain = {"preset": asdict(PRESETS[severity]), "seed": cell.seed, "synthesizer": synthesizer_digest()}
    elif severity != "none":
        rain = next((asdict(src) for src in spec.rainy if src.name == severity), spec.real_rain)
        if data is not None and severity in data.source_files:
            rain = {"source": rain, "files": _digest(data.source_files[severity])}
    dspec = cell.derainer
    # asdict recurses into the rain sources; the cell's own task model stands in for the dataset's list, so a
    # one-model dataset's cells keep their digest whether it says model: or models: and however many follow
    dataset = {k: v for k, v in asdict(spec).items() if k != "models"} | {"model": cell.task_model.model}
    parts = {
        "dataset": dataset,
        "data_files": None,  # below: the digest naming its manifest (see _save_manifest)
        "task_model": _content_digest(cell.task_model.model, hashes),
        "rain": rain,
        "derainer": None if dspec is None else [dspec.name, derainer_digest(dspec, hashes, scoring.derain_amp)],
        "scoring_options": {k: getattr(scoring, k) for k in get_task(spec.task).scoring_options} or None,
        "intervals": scoring.bootstrap > 0,
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
    sources = {src.name: match_rain_source(src, dataset, n, spec.split) for src in spec.rainy}
    if hasattr(dataset, "files"):
        files = list(dataset.files(n))
    else:
        warnings.warn(f"dataset {spec.name!r}: {type(dataset).__name__} does not list its files (files(n)); only its "
                      "images are fingerprinted, so edited labels are not noticed by a rerun", stacklevel=2)
        files = [Path(dataset.image_path(i)) for i in range(n)]
    digests = _file_digests(files, hashes)
    source_digests = {name: _file_digests(paths, hashes) for name, paths in sources.items()}
    if sources:
        images = [dataset.image_path(i) for i in range(n)]
        clean = _file_digests(images, hashes)
        for name, paths in sources.items():
            _check_not_clean(spec.name, name, images, paths, clean, source_digests[name])
    return OpenedDataset(dataset, n, sources, digests, source_digests)


def _check_not_clean(dataset: str, source: str, images: Sequence[Path], rainy: Sequence[Path],
                     clean_digests: dict[str, str | None], rainy_digests: dict[str, str | None]) -> None:
    """A rain source whose files are byte-identical to the clean images (a plain copy of the dataset) is refused;
    some identical files are warned about, naming them."""
    same = [str(image) for image, path in zip(images, rainy, strict=True)
            if clean_digests.get(str(image)) is not None and clean_digests.get(str(image)) == rainy_digests.get(
                str(path))]
    if same and len(same) == len(images):
        raise ValueError(f"dataset {dataset!r}: rain source {source!r}: all {len(images)} of its files are "
                         "byte-identical to the clean images (a copy of the dataset, not rainy images)")
    if same:
        warnings.warn(f"dataset {dataset!r}: rain source {source!r}: {len(same)} of its {len(images)} files are "
                      f"byte-identical to the clean images (no rain): {', '.join(Path(p).name for p in same[:5])}",
                      stacklevel=2)


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
    # neither its name nor what it was tuned with (tuned_with, for the report) changes its outputs
    parts = {k: v for k, v in asdict(dspec).items() if k not in ("name", "tuned_with") and k not in untiled}
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


def _data_digests(out: Path, cfg: BenchConfig, dataset: str) -> set[str]:
    """The data digests the finished cells of ``dataset`` were scored with (whose manifests are kept)."""
    keep = set()
    for cell in plan(cfg, dataset):
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
