"""The runs behind a report as tables: runs (seed, severities, device, versions), datasets and methods."""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

from derain.checkpoint import is_checkpoint, read_meta
from downstream.tasks import get_task
from eval.bench import Cell
from reports.runs import BASELINES, Combined, Run
from reports.tables import Column, Table

VERSION_KEYS = {
    "derainbench": "derainbench",
    "torch": "torch",
    "ultralytics": "ultralytics",
    "segmentation-models-pytorch": "smp",
}


def _text_columns(*labels: str) -> list[Column]:
    return [Column(re.sub(r"\W+", "_", label).strip("_"), label, best=False, numeric=False) for label in labels]


def _device(run: Run) -> str:
    env = run.environment
    if not env:
        return f"{run.config.get('device', 'auto')} (resolved device not recorded)"
    name = env.get("device_name")
    procs = env.get("processes", 1)
    return f"{env.get('device')}{f' ({name})' if name else ''}{f' × {procs} processes' if procs and procs > 1 else ''}"


def _versions(run: Run) -> str:
    env = run.environment
    if not env:
        return "not recorded (run made before environment.json existed)"
    packages = env.get("packages") or {}
    parts = [f"{short} {packages[k]}" for k, short in VERSION_KEYS.items() if packages.get(k)]
    return ", ".join([f"python {env.get('python')}", *parts])


def runs_table(combined: Combined) -> Table:
    """One row per run folder: name, seed, severities, cells finished, compute time, device, versions."""
    table = Table(
        "runs",
        "Runs",
        ["run"],
        _text_columns("folder", "seed", "severities", "cells", "compute (s)", "device", "versions"),
    )
    for run in combined.runs:
        cells = len(list((run.path / "cells").glob("*.json")))
        seconds = sum(float(v) for v in run.timings.values())
        severities = ", ".join(str(s) for s in run.config.get("severities") or [])
        table.rows.append(
            (
                [run.name],
                [str(run.path), str(run.seed), severities, str(cells), f"{seconds:.1f}", _device(run), _versions(run)],
            )
        )
    return table


def _images(run: Run, dataset: str) -> str:
    """How many images the run scored of ``dataset`` (every cell scores the same images): from its clean cell, or
    for real rain (no clean images) its first rainy cell; ``?`` when neither cell file is there."""
    rows = run.results[(run.results.dataset == dataset) & (run.results.method.isin(BASELINES))]
    pairs = sorted(set(zip(rows.severity, rows.method, strict=True)), key=lambda p: (p != ("none", "clean"), p))
    for severity, method in pairs:
        cell = run.path / "cells" / f"{Cell(dataset, severity, method).key}.json"
        if cell.is_file():
            return str(json.loads(cell.read_text()).get("n", "?"))
    return "?"


# What the official evaluator of each detection format ignores, as the bench scores it (downstream.metrics)
FORMAT_PROTOCOL = {
    "coco": "; iscrowd regions neither hits nor misses (pycocotools)",
    "bdd100k": "; ignored categories (other person, other vehicle, trailer) and crowd labels as crowd regions, "
               "boxes as scalabel converts them (scalabel's det eval)",
    "voc": "; difficult objects neither hits nor misses; also the VOC devkit's AP@.5, all-point (VOC2010+) and "
           "11-point (VOC2007)",
}


def _input_size(run: Run, dataset: str, spec: dict) -> str:
    """The detector input size the run's cells of ``dataset`` used and where it came from ("" for tasks without
    one; runs made before cells recorded it: the config's imgsz, if any)."""
    for cell in sorted((run.path / "cells").glob(f"{glob.escape(dataset)}__*.json")):
        try:
            data = json.loads(cell.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "imgsz_from" in data:
            if data.get("imgsz") is None:
                return ", imgsz: each image's long side (the model records no training size)"
            origin = {"checkpoint": "the size it was trained at", "config": "set in the config"}
            return f", imgsz {data['imgsz']} ({origin.get(data['imgsz_from'], data['imgsz_from'])})"
        break
    return f", imgsz {spec['imgsz']}" if spec.get("imgsz") else ""


def datasets_table(combined: Combined) -> Table:
    """One row per dataset: task, data, split, images scored, task model and detector thresholds."""
    table = Table(
        "datasets",
        "Datasets and task models",
        ["dataset"],
        _text_columns("task", "data", "split", "images", "task model", "scoring"),
    )
    for name, task in combined.datasets.items():
        run = next(r for r in combined.runs if name in set(r.results.dataset))
        spec = run.dataset(name) or {}
        data = f"{spec.get('path', '?')} ({spec.get('format', '?')})"
        options = get_task(task).scoring_options
        scoring = get_task(task).scoring_text.format(**{k: run.config.get(k) for k in options})
        scoring += FORMAT_PROTOCOL.get(str(spec.get("format")), "") + _input_size(run, name, spec)
        table.rows.append(
            (
                [name],
                [task, data, str(spec.get("split", "?")), _images(run, name), str(spec.get("model", "?")), scoring],
            )
        )
    return table


def _checkpoint_info(run: Run, model: str) -> str:
    """``step N`` of a checkpoint folder the config names (relative paths: working directory, then the run)."""
    for base in (Path.cwd(), run.path):
        path = Path(model) if Path(model).is_absolute() else base / model
        if path.exists() and is_checkpoint(path):
            meta = read_meta(path)
            step = meta.get("step")
            return f"{meta.get('name', '?')}, step {step}" if step is not None else str(meta.get("name", "?"))
    return ""


def methods_table(combined: Combined) -> Table:
    """One row per method: what produced its images and in which runs."""
    table = Table("methods", "Methods", ["method"], _text_columns("model", "weights", "checkpoint", "architecture",
                                                                  "weights sha256", "licence", "tile", "runs"))
    for label in combined.methods:
        sources = combined.sources.get(label, [])
        runs = ", ".join(dict.fromkeys(r.name for r, _ in sources))
        if label in BASELINES:
            what = "the clean images" if label == "clean" else "rain synthesized with the run seed"
            table.rows.append(([label], [what, "", "", "", "", "", "", runs]))
            continue
        run, name = sources[0]
        spec = run.derainer(name) or {}
        info = run.derainer_info.get(name, {})
        tile = f"{spec['tile']} (overlap {spec.get('overlap')})" if spec.get("tile") else "whole image"
        model = str(spec.get("model", "?"))
        arch = str(info.get("architecture", ""))
        if info.get("paper"):
            arch += f": {info['paper']}" + (f", {info['year']}" if info.get("year") else "")
        licence = str(info.get("licence", ""))
        if info.get("non_commercial"):
            licence = f"{licence}: research and non-commercial use only"
        digest = str(info.get("weights_sha256") or "")[:16]
        table.rows.append(([label], [model, str(spec.get("weights") or ""), _checkpoint_info(run, model), arch, digest,
                                     licence, tile, runs]))
    return table


def summary_tables(combined: Combined) -> list[Table]:
    """The run, dataset and method tables of the report's first section."""
    return [runs_table(combined), datasets_table(combined), methods_table(combined)]
