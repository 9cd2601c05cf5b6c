"""The result files rebuilt from the finished cells (:func:`write_results`): tidy result rows, the summary (drop,
recovery, gain, robustness), differences between derainers, per-class and per-seed rows, and their paired-bootstrap
intervals."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from derain.fileio import atomic_write_text
from derain.synth import PRESETS
from downstream.tasks import get_task
from eval.bench_config import DEFAULT_TASK_MODEL, SUMMARY_SEVERITY, BenchConfig, plan


def task_metrics(task: str, metrics: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The dataset metrics ``task`` reports in results.csv (the first is its headline); with a cell's ``metrics``,
    those it holds (some exist for some dataset formats only: VOC's devkit AP)."""
    keys = get_task(task).metric_keys()
    return keys if metrics is None else tuple(k for k in keys if k in metrics)


RESULT_FIELDS = ["dataset", "task", "task_model", "severity", "method", "metric", "value", "ci_low", "ci_high", "std",
                 "seeds"]


CellKey = tuple[str, str, str, int, str]  # (dataset, severity, method, rain replicate, task model)


def write_results(out: Path, cfg: BenchConfig) -> None:
    """Rebuild results.csv, per_seed.csv, per_image.csv, per_class.csv, summary.csv, differences.csv and
    timings.json from the finished cells. per_image.csv has a ``rain_file`` column (the name of the rainy file a
    rain source's row scored; empty on other rows) only when a cell read a rain source.

    With ``rain_seeds`` > 1 every row of synthetic rain (and every robustness row) is the mean over the seeds of
    the row computed per seed, ``std`` its sample std over seeds and ``seeds`` their number (per_seed.csv has the
    per-seed values); rows that do not depend on the seed (clean images, rain sources) have ``seeds`` 1. With
    ``cfg.bootstrap`` every task metric, drop, gain and robustness row gets its 95 % paired-bootstrap interval
    (``ci_low``, ``ci_high``), resampling images and, with several seeds, the seeds too."""
    cells: dict[CellKey, dict[str, Any]] = {}
    image_rows, timings = [], {}
    for spec in cfg.datasets:
        for planned in plan(cfg, spec.name):
            cell, tm = planned.cell, planned.task_model.name
            path = out / "cells" / f"{cell.key}.json"
            if not path.is_file():
                continue
            data = json.loads(path.read_text())
            cells[(cell.dataset, cell.severity, cell.method, cell.rep, tm)] = data
            base = {"dataset": cell.dataset, "task": data["task"], "task_model": tm, "severity": cell.severity,
                    "method": cell.method, "seed": planned.seed if cell.severity in PRESETS else ""}
            image_rows += [{**base, **r} for r in data["per_image"]]
            timings[cell.key] = round(data["seconds"], 3)
    names = [d.name for d in cfg.derainers]
    rows, summary, differences, classes = [], [], [], []
    for rep in range(cfg.rain_seeds):
        view = _replicate(cells, rep)
        r_rows = [row for key, data in view.items() for row in _cell_rows(key, data)]
        r_summary = summarize(r_rows)
        r_summary += gain_rows(r_rows + r_summary)
        rows.append(r_rows)
        summary.append(r_summary)
        differences.append(difference_rows(r_rows + r_summary, names))
        classes.append([row for key, data in view.items() for row in per_class_rows(data, key[3])])
    keys = ("dataset", "task_model", "severity", "method", "metric")
    (rows, seed_rows), (summary, seed_summary) = _over_seeds(rows, keys, cfg), _over_seeds(summary, keys, cfg)
    differences, _ = _over_seeds(differences, (*keys, "versus_task_model", "versus"), cfg)
    classes, _ = _over_seeds(classes, ("dataset", "task_model", "severity", "method", "class", "metric"), cfg)
    if cfg.bootstrap > 0:
        samples = bootstrap_samples(cells, cfg)
        views = [_replicate(samples, rep) for rep in range(cfg.rain_seeds)]
        draws = np.random.default_rng([cfg.seed, 2]).integers(0, cfg.rain_seeds, (cfg.bootstrap, cfg.rain_seeds))
        for row in rows + summary + differences:
            row["ci_low"], row["ci_high"] = _interval_of(row, views, draws)
    _write_csv(out / "results.csv", rows + summary, RESULT_FIELDS)
    _write_csv(out / "summary.csv", summary, RESULT_FIELDS)
    _write_csv(out / "per_seed.csv", seed_rows + seed_summary,
               ["dataset", "task", "task_model", "severity", "method", "seed", "metric", "value"])
    _write_csv(out / "differences.csv", differences,
               ["dataset", "task", "task_model", "severity", "method", "versus_task_model", "versus", "metric", "value",
                "ci_low", "ci_high", "std", "seeds"])
    source = ["rain_file"] if any("rain_file" in r for r in image_rows) else []  # only runs with rain sources
    _write_csv(out / "per_image.csv", image_rows,
               ["dataset", "task", "task_model", "severity", "method", "seed", "image", *source, "psnr_y", "ssim_y"])
    _write_csv(out / "per_class.csv", classes,
               ["dataset", "task", "task_model", "severity", "method", "class", "metric", "value"])
    atomic_write_text(out / "timings.json", json.dumps(timings, indent=1))


def _replicate(table: dict[tuple, Any], rep: int) -> dict[tuple, Any]:
    """The entries of rain replicate ``rep`` with the replicate dropped from the key: ``(dataset, severity, method,
    rep, task model, *rest) -> (dataset, severity, method, task model, *rest)``; seed-independent cells (replicate 0
    only) serve every replicate."""
    return {(k[0], k[1], k[2], *k[4:]): v for k, v in table.items() if k[3] == (rep if k[1] in PRESETS else 0)}


def _cell_rows(key: tuple[str, str, str, str], data: dict[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows (restoration and task metrics) of one cell (``key``: dataset, severity, method, task model)."""
    base = {"dataset": key[0], "task": data["task"], "task_model": key[3], "severity": key[1], "method": key[2]}
    values = {**data["restoration"], **{k: data["metrics"][k] for k in task_metrics(data["task"], data["metrics"])}}
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


def per_class_rows(cell: dict[str, Any], task_model: str | None = None) -> list[dict[str, Any]]:
    """Tidy per-class rows of one cell JSON (the task's per-class metrics: ``ap``/``ap50`` for detection, ``iou``
    for segmentation, ...); ``task_model``: its name (default: the one the cell records, else the one-model
    shorthand's)."""
    base = {"dataset": cell["cell"]["dataset"], "task": cell["task"],
            "task_model": task_model or cell.get("task_model", DEFAULT_TASK_MODEL),
            "severity": cell["cell"]["severity"], "method": cell["cell"]["method"]}
    return [{**base, "class": name, "metric": spec.key, "value": value}
            for key, spec in get_task(cell["task"]).per_class.items()
            for name, value in cell["metrics"].get(key, {}).items()]


def _coords(r: dict[str, Any], **change: str) -> tuple[str, str, str, str, str]:
    """A row's ``(dataset, task model, severity, method, metric)``, with ``change`` applied."""
    r = {"task_model": DEFAULT_TASK_MODEL, **r, **change}
    return r["dataset"], r["task_model"], r["severity"], r["method"], r["metric"]


def gain_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``gain_<m>`` = derained − rainy per severity, task model and task metric (the difference a recovery
    divides), and ``gain_<m>_pc`` = mPC derained − mPC rainy from the robustness rows (severity ``mean``): the
    difference behind a gap closed, defined (and with an interval) even where the gap it divides by is 0."""
    value = {_coords(r): r["value"] for r in rows}
    out = []
    for r in rows:
        metric = r["metric"].removesuffix("_pc") if r["severity"] == SUMMARY_SEVERITY else r["metric"]
        if (r["severity"] == "none" or r["method"] in ("rainy", "clean") or metric not in task_metrics(r["task"])
                or (r["severity"] == SUMMARY_SEVERITY) != r["metric"].endswith("_pc")):
            continue
        rainy = value.get(_coords(r, method="rainy"))
        if rainy is not None:
            out.append({**r, "metric": f"gain_{r['metric']}", "value": r["value"] - rainy})
    return out


def difference_rows(rows: list[dict[str, Any]], derainers: Sequence[str]) -> list[dict[str, Any]]:
    """``method − versus`` per severity and for the robustness mPC (severity ``mean``), for each task metric;
    ``differences.csv``. With one task model: every pair of derainers (config order). With several (a dataset's
    first is the reference, e.g. clean-trained), also across task models, each later one (``task_model``) against
    each earlier one (``versus_task_model``): its clean images against the earlier one's (what robustness costs on
    clean images), its rainy images against every strategy of the earlier one (does training with rain beat
    deraining?) and each derainer against the same derainer."""
    value = {_coords(r): r for r in rows}
    out = []

    def add(r: dict[str, Any], o: dict[str, Any] | None) -> None:
        if o is not None:
            out.append({"dataset": r["dataset"], "task": r["task"], "task_model": r["task_model"],
                        "severity": r["severity"], "method": r["method"], "versus_task_model": o["task_model"],
                        "versus": o["method"], "metric": r["metric"], "value": r["value"] - o["value"]})

    for r in value.values():
        base_metric = r["metric"].removesuffix("_pc")
        if base_metric not in task_metrics(r["task"]) or (r["severity"] == SUMMARY_SEVERITY) != (
                r["metric"].endswith("_pc")):
            continue
        method = r["method"]
        if method in derainers:
            for other in derainers[derainers.index(method) + 1:]:
                add(r, value.get(_coords(r, method=other)))
        models = list(dict.fromkeys(x["task_model"] for x in rows if x["dataset"] == r["dataset"]))
        for earlier in models[: models.index(r["task_model"])]:
            versus = {"clean": ["clean"], "rainy": ["rainy", *derainers]}.get(method, [method])
            for other in versus:
                add(r, value.get(_coords(r, task_model=earlier, method=other)))
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
        # Cells are independent and numpy releases the GIL in the heavy parts: threads use every core (1.9x on 2).
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            resampled = pool.map(resampled_metrics, [v["image_stats"] for v in mine.values()], repeat(weights))
            for key, metrics in zip(mine, resampled, strict=True):
                for metric, samples in metrics.items():
                    out[(*key, metric)] = samples
        for key, data in mine.items():
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


def _row_samples(row: dict[str, Any], samples: dict[tuple[str, str, str, str, str], np.ndarray]) -> np.ndarray | None:
    ds, sev, method, metric, tm = row["dataset"], row["severity"], row["method"], row["metric"], row["task_model"]

    def get(s: str, m: str, k: str, t: str = tm) -> np.ndarray | None:
        return samples.get((ds, s, m, t, k))

    def pc(m: str, k: str, t: str = tm) -> np.ndarray | None:
        per = [get(s, m, k, t) for s in {key[1] for key in samples if key[0] == ds and key[1] in PRESETS}]
        return np.mean(per, axis=0) if per and all(p is not None for p in per) else None

    if "versus" in row:  # differences.csv
        k, vt = metric.removesuffix("_pc"), row["versus_task_model"]
        a, b = (pc(method, k), pc(row["versus"], k, vt)) if sev == SUMMARY_SEVERITY else (
            get(sev, method, k), get(sev, row["versus"], k, vt))
        return None if a is None or b is None else a - b
    if metric.startswith("gain_"):  # derained − rainy, per severity or of the mPC (gain_<m>_pc)
        k = metric[5:].removesuffix("_pc")
        a, b = (pc(method, k), pc("rainy", k)) if sev == SUMMARY_SEVERITY else (get(sev, method, k),
                                                                               get(sev, "rainy", k))
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
        if kind == "gap":
            return clean - m_pc
        r_pc = pc("rainy", base)
        if r_pc is None:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            return (m_pc - r_pc) / (clean - r_pc)
    if metric.startswith("drop_"):
        a, b = get("none", "clean", metric[5:]), get(sev, "rainy", metric[5:])
        return None if a is None or b is None else a - b
    return get(sev, method, metric)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task metric m: ``drop_<m>`` = clean − rainy and ``recovery_<m>`` = (method − rainy) / (clean − rainy) per
    severity, then the robustness summary (:func:`robustness`) with severity ``mean``."""
    return _drop_recovery(rows) + robustness(rows)


def robustness(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The robustness-benchmark summary (Michaelis et al. 2019) per dataset, task metric m and method:

    ``<m>_pc`` = mPC, the metric averaged over the run's rain severities (levels 1–5 give the paper's mPC);
    ``<m>_rpc`` = rPC = mPC / P_clean (NaN where P_clean is 0: undefined); for rainy ``<m>_gap`` = P_clean −
    mPC_rainy, the average clean-to-rainy gap (its interval tells whether it is within noise); for derainers
    ``<m>_gap_closed`` = (mPC − mPC_rainy) / (P_clean − mPC_rainy), the share of that gap the derainer closes (1 =
    all, 0 = none). A method missing any severity gets no row (a partial average would not compare).
    """
    value = {_coords(r): r["value"] for r in rows}
    tasks = {_coords(r)[:2]: r["task"] for r in rows}
    out = []
    for (ds, tm), task in tasks.items():  # synthetic severities only: rain sources are not a severity ladder
        severities = sorted({k[2] for k in value if k[:2] == (ds, tm) and k[3] == "rainy" and k[2] in PRESETS})
        methods = list(dict.fromkeys(k[3] for k in value if k[:2] == (ds, tm) and k[2] != "none"))
        for metric in task_metrics(task):
            clean = value.get((ds, tm, "none", "clean", metric))
            if clean is None or not severities:
                continue
            pcs = {}
            for method in methods:
                vals = [value.get((ds, tm, sev, method, metric)) for sev in severities]
                if all(v is not None for v in vals):
                    pcs[method] = float(np.mean(vals))
            base = {"dataset": ds, "task": task, "task_model": tm, "severity": SUMMARY_SEVERITY}
            for method, pc in pcs.items():
                out.append({**base, "method": method, "metric": f"{metric}_pc", "value": pc})
                out.append({**base, "method": method, "metric": f"{metric}_rpc",
                            "value": pc / clean if clean else float("nan")})
                if method == "rainy":
                    out.append({**base, "method": method, "metric": f"{metric}_gap", "value": clean - pc})
                if method != "rainy" and "rainy" in pcs:
                    gap = clean - pcs["rainy"]
                    out.append({**base, "method": method, "metric": f"{metric}_gap_closed",
                                "value": (pc - pcs["rainy"]) / gap if gap else float("nan")})
    return out


def _drop_recovery(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    value = {_coords(r): r["value"] for r in rows}
    tasks = {r["dataset"]: r["task"] for r in rows}
    out = []
    for (ds, tm, sev, method, metric), v in value.items():
        task = tasks[ds]
        if sev == "none" or metric not in task_metrics(task):
            continue
        clean, rainy = value.get((ds, tm, "none", "clean", metric)), value.get((ds, tm, sev, "rainy", metric))
        if clean is None or rainy is None:
            continue
        base = {"dataset": ds, "task": task, "task_model": tm, "severity": sev, "method": method}
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
