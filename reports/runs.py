"""Benchmark run folders: load one (results, per-class scores, config, environment) and combine several.

Methods from different runs sit side by side; runs of the same configuration with different seeds are
aggregated as mean ± std over seeds. A dataset scored differently in two runs (another task model, split,
threshold, ...) cannot share a table: that is an error naming both folders.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from derain.config import read_yaml
from derain.synth import PRESETS
from downstream.tasks import get_task
from eval.bench import DEFAULT_TASK_MODEL, SUMMARY_SEVERITY

RESULT_COLUMNS = ["dataset", "task", "severity", "method", "metric", "value"]
NUMERIC_COLUMNS = ("value", "ci_low", "ci_high", "std", "seeds", "seed")  # checked to be numbers where present
CLASS_COLUMNS = ["dataset", "task", "severity", "method", "class", "metric", "value"]
BASELINES = ("clean", "rainy")
# What makes two runs score a dataset the same way (so their rows may share a table).
SCORING_KEYS = ("task", "format", "path", "split", "limit", "imgsz", "model", "models")
DERAINER_KEYS = ("model", "weights", "options", "tile", "overlap")


@dataclass
class Run:
    """One finished (or partly finished) ``derainbench bench`` output folder."""

    path: Path
    config: dict[str, Any]
    results: pd.DataFrame
    per_class: pd.DataFrame
    per_image: pd.DataFrame
    environment: dict[str, Any] | None
    timings: dict[str, float]
    derainer_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # derainers.json: architecture, weights...
    # Every task model's rows (``results`` holds each dataset's first task model's, which the other tables show)
    all_results: pd.DataFrame = field(default_factory=pd.DataFrame)
    differences: pd.DataFrame = field(default_factory=pd.DataFrame)  # differences.csv (empty when absent)

    @property
    def name(self) -> str:
        """The run's configured name (its folder name when the config has none)."""
        return str(self.config.get("name") or self.path.name)

    @property
    def seed(self) -> int:
        """The (first) rain seed of the run."""
        return int(self.config.get("seed", 0))

    @property
    def seeds(self) -> list[int]:
        """The run's rain seeds: ``seed``, ``seed + 1``, ... (``rain_seeds`` of them)."""
        return [self.seed + r for r in range(int(self.config.get("rain_seeds") or 1))]

    def derainer(self, name: str) -> dict[str, Any] | None:
        """The derainer entry named ``name`` in the run's config (None for clean / rainy)."""
        return next((d for d in self.config.get("derainers") or [] if d.get("name") == name), None)

    def dataset(self, name: str) -> dict[str, Any] | None:
        """The dataset entry named ``name`` in the run's config."""
        return next((d for d in self.config.get("datasets") or [] if d.get("name") == name), None)

    def trained_on(self, dataset: str, task_model: str) -> str:
        """What a dataset's task model was trained on (its ``trained_on``; clean for the one-model shorthand)."""
        entry = self.dataset(dataset) or {}
        found = next((m for m in entry.get("models") or [] if m.get("name") == task_model), {})
        return str(found.get("trained_on") or "clean")


def load_run(path: str | Path) -> Run:
    """Read a run folder; a folder that is not a benchmark run is an error saying what is missing and what to do."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder not found: {path}")
    results_csv = path / "results.csv"
    if not results_csv.is_file():
        hint = " (no cell finished yet)" if (path / "cells").is_dir() else ""
        raise FileNotFoundError(
            f"{results_csv} not found{hint}: give the `out` folder of a finished `derainbench bench --config ...` run"
        )
    results = _read_csv(results_csv, RESULT_COLUMNS)
    if results.empty:
        raise ValueError(f"{results_csv} has no rows: rerun `derainbench bench` so that at least one cell finishes")
    config = _read_config(path)
    results = _with_task_model(_expand_seeds(_with_task_model(results), path / "per_seed.csv"))
    per_class = _with_task_model(_read_per_class(path))
    differences = _read_optional_csv(path / "differences.csv")
    if not differences.empty and "task_model" not in differences:
        differences["task_model"] = differences["versus_task_model"] = DEFAULT_TASK_MODEL
    return Run(
        path=path,
        config=config,
        results=_first_task_model(results),
        per_class=_first_task_model(per_class),
        per_image=_read_optional_csv(path / "per_image.csv"),
        environment=_read_json(path / "environment.json"),
        timings=_read_json(path / "timings.json") or {},
        derainer_info=_read_json(path / "derainers.json") or {},
        all_results=results,
        differences=differences,
    )


def _read_config(path: Path) -> dict[str, Any]:
    config_yaml = path / "config.yaml"
    if not config_yaml.is_file():
        raise FileNotFoundError(
            f"{config_yaml} not found: the report needs the run's config (seed, models); "
            "`derainbench bench` writes it first, so copy it back next to results.csv"
        )
    return read_yaml(config_yaml)


def _with_task_model(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its ``task_model`` column (runs made before several task models had none: the one-model
    shorthand's name)."""
    if not table.empty and "task_model" not in table:
        table = table.assign(task_model=DEFAULT_TASK_MODEL)
    if "task_model" in table:
        table["task_model"] = table["task_model"].astype(str)
    return table


def _first_task_model(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of each dataset's first task model (the one the result tables show; rows come in config order)."""
    if table.empty:
        return table
    first = table.drop_duplicates("dataset").set_index("dataset")["task_model"]
    return table[table["task_model"].to_numpy() == first.reindex(table["dataset"]).to_numpy()].reset_index(drop=True)


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV with at least ``columns``; other tables are an error naming the file and the missing columns."""
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV table ({exc})") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: columns {missing} missing (has {list(table.columns)}); expected a derainbench bench output"
        )
    for col in ("dataset", "task", "severity", "method"):
        table[col] = table[col].astype(str)
    for col in [c for c in NUMERIC_COLUMNS if c in table.columns]:
        numbers = pd.to_numeric(table[col], errors="coerce")
        bad = numbers.isna() & table[col].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError(f"{path}:{row + 2}: column {col!r} holds {table[col].iloc[row]!r}, not a number (a "
                             "damaged or hand-edited row; rerun `derainbench bench` to rebuild the file)")
        table[col] = numbers
    return table


def _expand_seeds(results: pd.DataFrame, per_seed_csv: Path) -> pd.DataFrame:
    """A run scored with several rain seeds: its seed-dependent rows replaced by one row per seed (column ``seed``;
    each keeps the row's interval, which resampled the seeds too), so runs aggregate over all their seeds."""
    if not per_seed_csv.is_file():
        return results
    per_seed = _with_task_model(_read_csv(per_seed_csv, [*RESULT_COLUMNS[:4], "seed", "metric", "value"]))
    if per_seed["seed"].nunique() < 2:
        return results
    keys = ["dataset", "task_model", "severity", "method", "metric"]
    intervals = [c for c in ("ci_low", "ci_high") if c in results]
    expanded = per_seed.merge(results[keys + intervals], on=keys, how="left")
    hit = results.set_index(keys).index.isin(per_seed.set_index(keys).index)
    return pd.concat([results[~hit], expanded], ignore_index=True)


def _read_optional_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"]) if path.is_file() else pd.DataFrame()


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it or rerun `derainbench bench`") from exc


def _read_per_class(path: Path) -> pd.DataFrame:
    """``per_class.csv``, or the same rows rebuilt from ``cells/*.json`` for runs made before it existed."""
    if (path / "per_class.csv").is_file():
        table = _read_csv(path / "per_class.csv", CLASS_COLUMNS)
        table["class"] = table["class"].astype(str)
        return table
    from eval.bench import per_class_rows

    rows = [r for cell in sorted((path / "cells").glob("*.json")) for r in per_class_rows(_read_json(cell))]
    return pd.DataFrame(rows, columns=CLASS_COLUMNS)


@dataclass
class Combined:
    """Rows of one or several runs aggregated per (dataset, severity, method, metric): mean, std and seed count."""

    runs: list[Run]
    results: pd.DataFrame  # dataset, task, severity, method, metric, mean, std, n
    per_class: pd.DataFrame  # dataset, task, severity, method, class, metric, mean, std, n
    datasets: dict[str, str]  # name -> task, in order of appearance
    severities: list[str]  # "none" first, then the rain presets in their order
    methods: list[str]  # clean, rainy, then derainers in order of appearance
    sources: dict[str, list[tuple[Run, str]]] = field(default_factory=dict)  # method label -> (run, its name there)
    strategies: pd.DataFrame = field(default_factory=pd.DataFrame)  # like results, every task model (task_model)

    @property
    def seeds(self) -> list[int]:
        """The distinct rain seeds of the runs."""
        return sorted({s for r in self.runs for s in r.seeds})

    @property
    def max_n(self) -> int:
        """The largest number of seeds behind one value (1: no aggregation happened)."""
        return int(self.results["n"].max()) if not self.results.empty else 0

    def _row(self, dataset: str, severity: str, method: str, metric: str) -> pd.Series | None:
        """The aggregated row of one cell's metric, or None when no run has it."""
        r = self.results
        hit = r[(r.dataset == dataset) & (r.severity == severity) & (r.method == method) & (r.metric == metric)]
        return None if hit.empty else hit.iloc[0]

    def interval(self, dataset: str, severity: str, method: str, metric: str) -> tuple[float, float] | None:
        """The 95 % paired-bootstrap interval of one value (single-seed runs with intervals), else None."""
        row = self._row(dataset, severity, method, metric)
        if row is None or "ci_low" not in row:
            return None
        lo, hi = float(row["ci_low"]), float(row["ci_high"])
        return (lo, hi) if is_finite(lo) and is_finite(hi) else None

    def value(self, dataset: str, severity: str, method: str, metric: str) -> tuple[float, float, int] | None:
        """``(mean, std, n)`` of one cell's metric, or None when no run has it."""
        row = self._row(dataset, severity, method, metric)
        return None if row is None else (float(row["mean"]), float(row["std"]), int(row["n"]))

    def methods_of(self, dataset: str, severity: str) -> list[str]:
        """The methods with results for ``dataset`` at ``severity``, in report order."""
        r = self.results
        present = set(r[(r.dataset == dataset) & (r.severity == severity)].method)
        return [m for m in self.methods if m in present]

    def severities_of(self, dataset: str) -> list[str]:
        """The severities with results for ``dataset``, in report order ("none" first)."""
        present = set(self.results[self.results.dataset == dataset].severity)
        return [s for s in self.severities if s in present]

    def rain_severities(self) -> list[str]:
        """The rain severities (everything but "none")."""
        return [s for s in self.severities if s != "none"]


def load_runs(run_dirs: str | Path | Iterable[str | Path]) -> Combined:
    """Load and combine run folders (a single path is one run)."""
    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    if not dirs:
        raise ValueError("no run folder given")
    return combine([load_run(d) for d in dirs])


def combine(runs: Sequence[Run]) -> Combined:
    """Check that the runs can share tables, label their methods, and aggregate values over seeds."""
    resolved = {r.path.resolve() for r in runs}
    if len(resolved) < len(runs):
        raise ValueError("the same run folder was given twice; list each run once")
    _check_datasets(runs)
    labels = method_labels(runs)
    results = _aggregate([_relabel(r.results, i, r, labels) for i, r in enumerate(runs)], RESULT_COLUMNS[:-2])
    per_class = _aggregate([_relabel(r.per_class, i, r, labels) for i, r in enumerate(runs)], CLASS_COLUMNS[:-2])
    strategies = _aggregate([_relabel(r.all_results, i, r, labels) for i, r in enumerate(runs)],
                            [*RESULT_COLUMNS[:2], "task_model", *RESULT_COLUMNS[2:4]])
    sources: dict[str, list[tuple[Run, str]]] = {}
    for (i, method), label in labels.items():
        sources.setdefault(label, []).append((runs[i], method))
    datasets: dict[str, str] = {}
    for r in runs:
        for ds, task in zip(r.results.dataset, r.results.task, strict=True):
            datasets.setdefault(ds, task)
    return Combined(
        runs=list(runs),
        results=results,
        per_class=per_class,
        datasets=datasets,
        severities=_order_severities(results.severity),
        methods=_order_methods(runs, labels),
        sources=sources,
        strategies=strategies,
    )


def _check_datasets(runs: Sequence[Run]) -> None:
    """Every dataset name must be scored the same way (task, data, task model, thresholds) in every run."""
    seen: dict[str, tuple[Run, dict[str, Any]]] = {}
    for run in runs:
        for name in dict.fromkeys(run.results.dataset):
            spec = scoring(run, name)
            if name not in seen:
                seen[name] = (run, spec)
                continue
            first, first_spec = seen[name]
            diff = [k for k in spec if spec[k] != first_spec.get(k)]
            if diff:
                k = diff[0]
                raise ValueError(
                    f"runs {first.path} and {run.path} score dataset {name!r} differently ({k}: "
                    f"{first_spec.get(k)!r} vs {spec[k]!r}), so their tables cannot be combined: report them "
                    "separately, or give the dataset another name in one of the bench configs"
                )


def scoring(run: Run, dataset: str) -> dict[str, Any]:
    """What determines a dataset's task scores in ``run``: its config entry plus the detector thresholds."""
    entry = run.dataset(dataset)
    task = str(run.results.loc[run.results.dataset == dataset, "task"].iloc[0])
    if entry is None:
        return {"task": task}
    spec = {k: entry.get(k) for k in SCORING_KEYS}
    spec["models"] = entry.get("models") or []  # runs made before several task models have no models key
    spec.update({k: run.config.get(k) for k in get_task(task).scoring_options})
    return spec


def method_labels(runs: Sequence[Run]) -> dict[tuple[int, str], str]:
    """``(run index, method) -> label``: a derainer keeps its name unless runs use that name for different models,
    then each variant gets its run's name (or folder name) in parentheses."""
    variants: dict[str, list[str]] = {}  # derainer name -> distinct spec keys, in order
    keys: dict[tuple[int, str], str] = {}
    for i, run in enumerate(runs):
        for method in dict.fromkeys(run.results.method):
            spec = run.derainer(method)
            key = json.dumps({k: (spec or {}).get(k) for k in DERAINER_KEYS}, sort_keys=True, default=str)
            keys[(i, method)] = key
            if method not in BASELINES and key not in variants.setdefault(method, []):
                variants[method].append(key)
    labels = {}
    for method, specs in variants.items():
        owner = {key: next(runs[j] for (j, m), k in keys.items() if m == method and k == key) for key in specs}
        for attr in ("name", "path.name", "path"):  # the shortest suffix that tells the variants apart
            suffix = {
                key: str(run.name if attr == "name" else run.path.name if attr == "path.name" else run.path)
                for key, run in owner.items()
            }
            if len(set(suffix.values())) == len(specs):
                break
        for (i, m), key in keys.items():
            if m == method:
                labels[(i, m)] = method if len(specs) == 1 else f"{method} ({suffix[key]})"
    labels.update({(i, m): m for (i, m) in keys if m in BASELINES})
    return labels


def _relabel(table: pd.DataFrame, index: int, run: Run, labels: dict[tuple[int, str], str]) -> pd.DataFrame:
    """A copy of ``table`` with methods renamed to their labels, the run's seed attached to rows without one and
    the run's index (``run``)."""
    out = table.copy()
    if not out.empty:
        out["method"] = [labels.get((index, m), m) for m in out["method"]]
    out["seed"] = out["seed"].fillna(run.seed) if "seed" in out else run.seed
    out["run"] = index
    return out


def _aggregate(tables: list[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """Mean, std (over seeds; NaN for one) and seed count per ``keys`` + metric.

    One value per seed: a run repeated with the same seed adds nothing, and the clean images do not depend on
    the seed at all, so clean rows count once.
    """
    columns = [*keys, "metric", "mean", "std", "n", "ci_low", "ci_high"]
    filled = [t for t in tables if not t.empty]
    if not filled:
        return pd.DataFrame(columns=columns)
    rows = pd.concat(filled, ignore_index=True)
    rows.loc[rows.severity == "none", "seed"] = 0
    rows = rows.drop_duplicates([*keys, "metric", "seed"], keep="first")
    for col in ("ci_low", "ci_high"):  # runs made before the bootstrap have no intervals
        rows[col] = pd.to_numeric(rows[col], errors="coerce") if col in rows else np.nan
    grouped = rows.groupby([*keys, "metric"], sort=False, dropna=False)
    out = grouped.agg(
        mean=("value", "mean"),
        std=("value", "std"),
        n=("value", "count"),
        ci_low=("ci_low", "first"),
        ci_high=("ci_high", "first"),
        runs=("run", "nunique"),
    ).reset_index()
    # a run's interval describes its own mean (over its images and seeds), not a mean over several runs
    out.loc[out["runs"] > 1, ["ci_low", "ci_high"]] = np.nan
    return out[columns]


def _order_severities(severities: Iterable[str]) -> list[str]:
    """ "none" first, then the rain presets in their own order, then any other name in order of appearance; the
    robustness summary's ``mean`` is not a severity (its rows are read with ``value(..., "mean", ...)``)."""
    present = [s for s in dict.fromkeys(severities) if s != SUMMARY_SEVERITY]
    known = ["none", *PRESETS]
    return [s for s in known if s in present] + [s for s in present if s not in known]


def _order_methods(runs: Sequence[Run], labels: dict[tuple[int, str], str]) -> list[str]:
    """clean, rainy, then every derainer label in the order the runs' configs list them."""
    order: list[str] = list(BASELINES)
    for i, run in enumerate(runs):
        names = [d.get("name") for d in run.config.get("derainers") or []] + list(dict.fromkeys(run.results.method))
        for method in names:
            label = labels.get((i, method))
            if label is not None and label not in order:
                order.append(label)
    present = {label for label in labels.values()}
    return [m for m in order if m in present]


def is_finite(x: float | None) -> bool:
    """True for a real number (not None, NaN or ±inf)."""
    return x is not None and math.isfinite(x)
