"""The benchmark runner: clean / rainy / derained images -> task model -> mAP or mIoU, per method × severity.

Every (dataset, severity, method, task model) *cell* is computed in memory (rain synthesized with the run seed and the
image's name, exactly as ``derainbench synth`` would write it, then quantized to 8 bits like a PNG; derained
tensors go straight into the task model) and saved atomically to ``cells/`` when finished, so a crash or
Ctrl-C loses at most the cell in progress and a rerun skips finished cells. ``results.csv`` (tidy rows:
dataset, task, task_model, severity, method, metric, value), ``per_image.csv``, ``summary.csv`` (drop and recovery),
``per_class.csv`` (AP / IoU per class), ``predictions/`` (COCO result JSON), ``samples/`` and ``timings.json``
are rebuilt from the cells; ``environment.json`` records the device and package versions of the last invocation.

This module plans the cells against the opened datasets (:func:`plan_cells`: each a :class:`PlannedCell` with
its inputs and fingerprint) and runs the missing ones (:func:`eval.cells.run_cell`); the parts live beside it and
their public names are re-exported here: :mod:`eval.bench_config` (the config, its checks and :func:`plan`, the one
place that lists a config's cells), :mod:`eval.rain_sources` (matching rain sources),
:mod:`eval.fingerprints` (what determines a cell's numbers), :mod:`eval.cells` (running one cell) and
:mod:`eval.results` (the result files).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

from derain.checkpoint import folder_lock
from derain.config import save_config
from derain.fileio import atomic_write_text
from derain.inference import NonFiniteOutputError
from derain.runtime import DistInfo, barrier, cleanup_distributed, init_distributed, resolve_device
from eval.bench_config import (
    DEFAULT_TASK_MODEL,
    SUMMARY_SEVERITY,
    TRAINED_ON,
    BenchConfig,
    Cell,
    DatasetSpec,
    DerainerSpec,
    PlannedCell,
    RainSource,
    Scoring,
    TaskModelSpec,
    plan,
    validate,
)
from eval.cells import (
    DERAINERS_FILE,
    CellInputs,
    CellItem,
    Runtime,
    default_workers,
    describe_derainer,
    environment,
    rainy_image,
    record_derainer,
    run_cell,
)
from eval.fingerprints import (
    INPUT_PARTS,
    SCORING_MODULES,
    OpenedDataset,
    _data_digests,
    _digest,
    _log_stale,
    _save_manifest,
    _stale,
    cell_fingerprint,
    cell_inputs,
    check_out_folder,
    derainer_digest,
    open_dataset,
    scoring_code_digest,
)
from eval.rain_sources import match_rain_source
from eval.results import (
    RESULT_FIELDS,
    CellKey,
    bootstrap_samples,
    difference_rows,
    gain_rows,
    per_class_rows,
    robustness,
    summarize,
    task_metrics,
    write_results,
)

__all__ = [
    "BenchConfig",
    "Cell",
    "CellInputs",
    "CellItem",
    "CellKey",
    "CellsFailedError",
    "DEFAULT_TASK_MODEL",
    "DERAINERS_FILE",
    "DatasetSpec",
    "DerainerSpec",
    "INPUT_PARTS",
    "OpenedDataset",
    "PlannedCell",
    "RESULT_FIELDS",
    "RainSource",
    "Runtime",
    "SCORING_MODULES",
    "Scoring",
    "TRAINED_ON",
    "TaskModelSpec",
    "SUMMARY_SEVERITY",
    "bootstrap_samples",
    "cell_fingerprint",
    "cell_inputs",
    "check_out_folder",
    "default_workers",
    "derainer_digest",
    "describe_derainer",
    "difference_rows",
    "environment",
    "gain_rows",
    "match_rain_source",
    "open_dataset",
    "per_class_rows",
    "plan",
    "plan_cells",
    "rainy_image",
    "record_derainer",
    "robustness",
    "run_bench",
    "run_cell",
    "scoring_code_digest",
    "summarize",
    "task_metrics",
    "validate",
    "write_results",
]


class CellsFailedError(RuntimeError):
    """Some cells could not be scored (e.g. a derainer returned NaN); the rest of the run is written."""


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


def plan_cells(cfg: BenchConfig, spec: DatasetSpec, data: OpenedDataset, hashes: dict[str, str]) -> list[PlannedCell]:
    """The cells of dataset ``spec`` (:func:`plan`) planned against its opened files (``data``): each with its
    inputs and fingerprint (``hashes`` caches file digests)."""
    cells = []
    for cell in plan(cfg, spec.name):
        cell = replace(cell, data=data)
        inputs = cell_inputs(cell, hashes)
        cells.append(replace(cell, inputs=inputs, fingerprint=_digest(inputs)))
    return cells


def _run_cells(cfg: BenchConfig, out: Path, dist: DistInfo, force: bool, progress: bool,
               opened: dict[str, OpenedDataset], hashes: dict[str, str]) -> None:
    """Score the missing or stale cells of every dataset (``opened``), then rebuild the result files (rank 0)."""
    if dist.is_main:
        (out / "cells").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    device = resolve_device(cfg.device, dist.local_rank if dist.enabled else None)
    if dist.is_main:
        atomic_write_text(out / "environment.json", json.dumps(environment(device, dist), indent=1))
    rt = Runtime.of(cfg, device, out, dist, progress)
    rt.hashes = hashes
    failed: list[str] = []  # cells whose derainer output was not finite (never scored, retried by a rerun)
    for spec in cfg.datasets:
        data = opened[spec.name]
        todo, stale = [], {}
        for cell in plan_cells(cfg, spec, data, hashes):
            path = out / "cells" / f"{cell.key}.json"
            if force or not path.is_file():
                todo.append(cell)
            elif why := _stale(path, cell.fingerprint, cell.inputs):
                todo.append(cell)
                stale[cell.key] = why
        if stale and dist.is_main:
            _log_stale(out, spec.name, stale, data)
        barrier(dist)  # every rank has decided what to do before rank 0 writes the next cell
        if not todo:
            continue
        if dist.is_main:
            _save_manifest(out, spec.name, data, _data_digests(out, cfg, spec.name))
        for cell in todo:
            try:
                result = run_cell(cell, rt)
            except NonFiniteOutputError as exc:
                if dist.enabled:  # ranks may disagree on which images fail: stop all rather than wait on each other
                    raise
                failed.append(f"{cell.key}: {exc}")
                print(f"bench: cell {cell.key} failed, not scored: {exc}")
                continue
            if dist.is_main:
                result["fingerprint"], result["inputs"] = cell.fingerprint, cell.inputs
                atomic_write_text(out / "cells" / f"{cell.key}.json", json.dumps(result, indent=1))
    if dist.is_main:
        write_results(out, cfg)
    barrier(dist)
    if failed:
        raise CellsFailedError(f"{len(failed)} cell(s) failed and were not scored (the other results are written): "
                               + "; ".join(failed[:3]) + (" ..." if len(failed) > 3 else ""))
