"""The strategies against rain side by side, per dataset: rainy images and each derainer's output scored by a task
model trained on clean images, the same scored by one trained with rain, and a jointly tuned derainer with the task
model it was tuned with (one table and one figure per dataset, the headline task metric).

What each task model and derainer is comes from the bench config: a task model's ``trained_on: clean|rain`` (entries
of a dataset's ``models:``; the one-model shorthand ``model:`` is clean-trained) and a derainer's ``tuned_with: NAME``
(the task model it was jointly tuned with). Each value carries its 95 % paired-bootstrap interval and the noise mark
of the other tables: a derainer's row against rainy images scored by the same task model (the gain behind a
recovery), a rainy row of a later task model against the first task model's rainy row (differences.csv).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.bench import SUMMARY_SEVERITY
from eval.bootstrap import excludes_zero
from reports.runs import BASELINES, Combined, is_finite
from reports.stats import primary_metric
from reports.tables import CI_MARK, Column, Entry, Table, Value, metric_label, metric_name, seeds_note, slug

ARROW = "→"


@dataclass(frozen=True)
class Strategy:
    """One row: ``method`` (rainy or a derainer label) scored by ``task_model``."""

    method: str
    task_model: str
    trained_on: str
    joint: bool = False

    @property
    def label(self) -> str:
        return f"{self.method} {ARROW} {self.task_model}" + (" (joint)" if self.joint else "")


def task_models(combined: Combined, dataset: str) -> list[tuple[str, str]]:
    """``(name, trained_on)`` of a dataset's task models: clean-trained first, each group in config order."""
    s = combined.strategies
    names = list(dict.fromkeys(s[s.dataset == dataset].task_model)) if not s.empty else []
    found = {n: next((r.trained_on(dataset, n) for r in combined.runs if r.dataset(dataset)), "clean") for n in names}
    return sorted(found.items(), key=lambda item: item[1] != "clean")


def tuned_with(combined: Combined) -> dict[str, str]:
    """Derainer label -> the task model it was jointly tuned with (its config entry's ``tuned_with``)."""
    out = {}
    for label, sources in combined.sources.items():
        for run, name in sources:
            entry = run.derainer(name) or {}
            if entry.get("tuned_with"):
                out[label] = str(entry["tuned_with"])
    return out


def strategies(combined: Combined, dataset: str) -> list[Strategy]:
    """The rows of a dataset's strategies table; empty when it has one task model and no jointly tuned derainer
    (the other tables say it all)."""
    models = task_models(combined, dataset)
    joint = {m: tm for m, tm in tuned_with(combined).items() if tm in dict(models)}
    if len(models) < 2 and not joint:
        return []
    derainers = [m for m in combined.methods if m not in BASELINES]
    rows = [Strategy(m, tm, on) for tm, on in models for m in ["rainy", *(d for d in derainers if d not in joint)]]
    rows += [Strategy(m, tm, dict(models)[tm], joint=True) for m, tm in joint.items()]
    present = {(r.method, r.task_model) for r in combined.strategies[combined.strategies.dataset == dataset]
               .itertuples()}
    return [r for r in rows if (r.method, r.task_model) in present]


def _value(combined: Combined, dataset: str, row: Strategy, severity: str, metric: str) -> tuple[Value, str]:
    """The number (with its noise mark) and its 95 % interval as text of one strategy × condition."""
    s = combined.strategies
    method = "clean" if severity == "none" else row.method
    hit = s[(s.dataset == dataset) & (s.task_model == row.task_model) & (s.severity == severity)
            & (s.method == method) & (s.metric == metric)]
    if hit.empty:
        return Value(None), ""
    r = hit.iloc[0]
    value = Value(float(r["mean"]), float(r["std"]), int(r["n"]))
    lo, hi = float(r["ci_low"]), float(r["ci_high"])
    ci = f"[{lo:.3f}, {hi:.3f}]" if is_finite(lo) and is_finite(hi) else ""
    behind = _difference_interval(combined, dataset, row, severity, metric)
    value.noise = behind is not None and not excludes_zero(behind)
    return value, ci


def _difference_interval(combined: Combined, dataset: str, row: Strategy, severity: str,
                         metric: str) -> tuple[float, float] | None:
    """The interval of the difference a row's noise mark reads (see the module docstring), None where none."""
    base = metric.removesuffix("_pc")
    if row.method != "rainy" and severity != "none":  # derained - rainy, same task model: the gain (mPC: its gain)
        s = combined.strategies
        mine = s[(s.dataset == dataset) & (s.task_model == row.task_model) & (s.severity == severity)
                 & (s.method == row.method)]
        hit = mine[mine.metric == (f"gain_{base}_pc" if severity == SUMMARY_SEVERITY else f"gain_{base}")]
        if hit.empty and severity == SUMMARY_SEVERITY:  # runs written before gain_<m>_pc: the gap closed's interval
            hit = mine[mine.metric == f"{base}_gap_closed"]
    else:  # a later task model's clean / rainy row against the first task model's
        first = task_models(combined, dataset)[0][0] if combined.runs else row.task_model
        if row.task_model == first or len(combined.runs) != 1:
            return None
        d = combined.runs[0].differences
        if d.empty:
            return None
        method = "clean" if severity == "none" else "rainy"
        hit = d[(d.dataset == dataset) & (d.task_model == row.task_model) & (d.versus_task_model == first)
                & (d.severity == severity) & (d.method == method) & (d.versus == method) & (d.metric == metric)]
    if hit.empty:
        return None
    lo, hi = float(hit.iloc[0]["ci_low"]), float(hit.iloc[0]["ci_high"])
    return (lo, hi) if is_finite(lo) and is_finite(hi) else None


def conditions(combined: Combined, dataset: str) -> list[tuple[str, str, str]]:
    """``(column key, label, severity)``: clean, each rain severity or source, mPC."""
    metric = primary_metric(combined.datasets[dataset])
    rain = [s for s in combined.severities if s != "none" and not combined.strategies[
        (combined.strategies.dataset == dataset) & (combined.strategies.severity == s)].empty]
    out = [("none", "clean", "none")] + [(s, s, s) for s in rain]
    has_pc = not combined.strategies[(combined.strategies.dataset == dataset)
                                     & (combined.strategies.metric == f"{metric}_pc")].empty
    return out + ([("mpc", "mPC", SUMMARY_SEVERITY)] if has_pc else [])


def strategies_table(combined: Combined, dataset: str) -> Table | None:
    """One dataset's strategies table (None when :func:`strategies` has no rows for it)."""
    rows = strategies(combined, dataset)
    if not rows:
        return None
    metric = primary_metric(combined.datasets[dataset])
    conds = conditions(combined, dataset)
    columns = []
    for key, label, _ in conds:
        columns += [Column(key, label), Column(f"{key}_ci", "95 % CI", group=label, best=False, numeric=False)]
    columns = [Column(c.key, c.label if c.key.endswith("_ci") else metric_label(metric), group=lab, best=c.best,
                      numeric=c.numeric) for c, lab in zip(columns, [x[1] for x in conds for _ in (0, 1)],
                                                          strict=True)]
    table = Table(
        f"strategies_{slug(dataset)}",
        f"{dataset}: strategies against rain ({metric_name(metric)})",
        ["strategy", "trained on"],
        columns,
        notes=[
            f"method {ARROW} task model: the images (rainy, or a derainer's output) and the task model scoring them; "
            "trained on = the task model's training images (bench config trained_on); (joint) = a derainer tuned "
            "with that task model (tuned_with). clean = the task model on clean images (what robustness costs "
            "there); mPC = the mean over the synthetic severities. Bold: best per column."
        ],
    )
    for row in rows:
        entries: list[Entry] = []
        for _, _, sev in conds:
            value, ci = _value(combined, dataset, row, sev, f"{metric}_pc" if sev == SUMMARY_SEVERITY else metric)
            entries += [value, ci]
        table.rows.append(([row.label, row.trained_on], entries))
    for j, col in enumerate(table.columns):  # bold the best per column (all rows compete: one block)
        values = [e[j] for _, e in table.rows if isinstance(e[j], Value) and is_finite(e[j].mean)]
        shown = [round(v.mean, col.digits) for v in values]
        if col.best and len(set(shown)) > 1:
            for v, x in zip(values, shown, strict=True):
                v.best = x == max(shown)
    if any(isinstance(e, Value) and e.noise for _, entries in table.rows for e in entries):
        table.footnotes.append(
            f"{CI_MARK} within noise: the 95 % paired-bootstrap interval over images of its difference contains 0 "
            f"(a derainer's row against rainy {ARROW} the same task model; a later task model's clean or rainy row "
            "against the first task model's)."
        )
    table.footnotes += seeds_note(combined)
    return table


def strategies_tables(combined: Combined) -> list[Table]:
    """A strategies table per dataset that has several task models or a jointly tuned derainer."""
    tables = [strategies_table(combined, ds) for ds in combined.datasets]
    return [t for t in tables if t is not None]


def strategies_figure(combined: Combined, dataset: str, path: Path) -> Path | None:
    """Grouped bars: per condition (clean, severities, mPC) one bar per strategy with its 95 % interval."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from reports.plots import save_figure

    rows = strategies(combined, dataset)
    if not rows:
        return None
    metric = primary_metric(combined.datasets[dataset])
    conds = conditions(combined, dataset)
    fig = Figure(figsize=(max(6.0, 1.2 * len(conds) * max(len(rows), 3) / 3 + 3.5), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(rows)
    cmap = colormaps["tab20"]
    x = np.arange(len(conds))
    for i, row in enumerate(rows):
        ys, lo, hi = [], [], []
        for _, _, sev in conds:
            s = combined.strategies
            hit = s[(s.dataset == dataset) & (s.task_model == row.task_model) & (s.severity == sev)
                    & (s.method == ("clean" if sev == "none" else row.method))
                    & (s.metric == (f"{metric}_pc" if sev == SUMMARY_SEVERITY else metric))]
            y = float(hit.iloc[0]["mean"]) if not hit.empty else np.nan
            a = float(hit.iloc[0]["ci_low"]) if not hit.empty else np.nan
            b = float(hit.iloc[0]["ci_high"]) if not hit.empty else np.nan
            ys.append(y)
            lo.append(y - a if is_finite(a) else 0.0)
            hi.append(b - y if is_finite(b) else 0.0)
        hatch = "//" if row.trained_on == "rain" else ("xx" if row.joint else None)
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, ys, width, yerr=[lo, hi], capsize=2, label=row.label,
               color=cmap(i % 20), hatch=hatch, edgecolor="black", linewidth=0.4)
    ax.set_xticks(x, [label for _, label, _ in conds])
    ax.set_ylim(bottom=0)  # task scores are >= 0 (left alone, all-zero bars centre the axis on 0)
    ax.set_ylabel(metric_name(metric))
    ax.set_title(f"{dataset}: strategies against rain (bars: 95 % paired-bootstrap intervals)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="strategy", title_fontsize=8)
    return save_figure(fig, path)

