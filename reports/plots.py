"""Report figures (matplotlib, headless: Figure objects render with Agg, pyplot is never touched).

Every figure: axis labels with units, the legend outside the axes, one colour per method shared by all figures
(:func:`method_colors`), saved at :data:`DPI` dots per inch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from derain.fileio import atomic_path
from downstream.tasks import get_task
from reports.runs import Combined, is_finite
from reports.stats import correlation, primary_metric, psnr_task_points, worst_severity
from reports.tables import metric_name, shown_metrics
from reports.training import TrainingLog

DPI = 150
BASELINE_COLORS = {"clean": "#000000", "rainy": "#7f7f7f"}
# tab10 without its grey (kept for "rainy"), then tab20's lighter shades
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
]
SEVERITY_MARKERS = {"none": "*", "light": "o", "medium": "s", "heavy": "^"}
EXTRA_MARKERS = ["D", "v", "P", "X", "<", ">"]
UNIT_FREE = " (0–1)"


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """clean black, rainy grey, every other method its own palette colour in the order given (stable per report)."""
    colors = dict(BASELINE_COLORS)
    others = [m for m in methods if m not in colors]
    colors.update({m: PALETTE[i % len(PALETTE)] for i, m in enumerate(others)})
    return colors


def severity_marker(severity: str, severities: Sequence[str]) -> str:
    """A marker per severity (circle light, square medium, triangle heavy; others from a fixed list)."""
    if severity in SEVERITY_MARKERS:
        return SEVERITY_MARKERS[severity]
    extra = [s for s in severities if s not in SEVERITY_MARKERS]
    return EXTRA_MARKERS[extra.index(severity) % len(EXTRA_MARKERS)] if severity in extra else "o"


def metric_axis_label(metric: str) -> str:
    """Axis label with its unit: dB for PSNR, the 0–1 range for ratios."""
    name = metric_name(metric)
    return name if "(dB)" in name else name + UNIT_FREE


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG atomically (temp file + rename), tight around the outside legends."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", pad_inches=0.1, facecolor="white", format="png")
    return path


def _line_style(method: str) -> dict:
    """Rainy drawn wide and pale underneath, so a derainer that equals it (identity) stays visible on top."""
    if method == "rainy":
        return {"linewidth": 4.0, "markersize": 9, "alpha": 0.55, "zorder": 2}
    return {"linewidth": 1.6, "markersize": 6, "alpha": 1.0, "zorder": 3}


def _legend_outside(fig: Figure, handles: list, labels: list[str], title: str | None = None) -> None:
    fig.legend(handles, labels, loc="outside right upper", title=title, frameon=False)


def _unique(handles: list, labels: list[str]) -> tuple[list, list[str]]:
    seen: dict[str, object] = {}
    for h, label in zip(handles, labels, strict=True):
        seen.setdefault(label, h)
    return list(seen.values()), list(seen)


def metric_vs_severity(combined: Combined, colors: dict[str, str], path: Path) -> Path | None:
    """Task metrics against rain severity, one line per method, clean as a dashed reference; rows = datasets."""
    datasets = [d for d in combined.datasets if len(combined.severities_of(d)) > 1]
    if not datasets:
        return None
    shown = {d: shown_metrics(combined, combined.datasets[d], [d]) for d in datasets}
    ncols = max(len(m) for m in shown.values())
    fig = Figure(figsize=(4.3 * ncols + 1.8, 3.1 * len(datasets)), layout="constrained")
    axes = fig.subplots(len(datasets), ncols, squeeze=False)
    handles, labels = [], []
    for row, ds in zip(axes, datasets, strict=True):
        severities = [s for s in combined.severities_of(ds) if s != "none"]
        x = np.arange(len(severities))
        for ax, metric in zip(row, shown[ds], strict=False):
            clean = combined.value(ds, "none", "clean", metric)
            if clean and is_finite(clean[0]):
                ax.axhline(clean[0], color=colors["clean"], linestyle="--", linewidth=1.2, label="clean (no rain)")
            for method in [m for m in combined.methods if m != "clean"]:
                values = [combined.value(ds, s, method, metric) for s in severities]
                if not any(v and is_finite(v[0]) for v in values):
                    continue
                y = np.array([v[0] if v else np.nan for v in values], dtype=float)
                err = np.array([v[1] if v and v[2] > 1 and is_finite(v[1]) else 0.0 for v in values])
                ax.errorbar(
                    x,
                    y,
                    yerr=err if err.any() else None,
                    marker="o",
                    color=colors[method],
                    label=method,
                    capsize=3,
                    **_line_style(method),
                )
            ax.set_xticks(x, severities)
            ax.set_xlim(-0.4, len(severities) - 0.6)
            ax.set_xlabel("rain severity (synthetic preset)")
            ax.set_ylabel(metric_axis_label(metric))
            ax.set_title(f"{ds}: {metric_name(metric)}", fontsize=10)
            ax.grid(alpha=0.3)
            h, lab = ax.get_legend_handles_labels()
            handles, labels = handles + h, labels + lab
        for ax in row[len(shown[ds]) :]:
            ax.set_visible(False)
    _legend_outside(fig, *_unique(handles, labels), title="method")
    return save_figure(fig, path)


def psnr_vs_task(combined: Combined, colors: dict[str, str], path: Path) -> Path | None:
    """PSNR-Y against the headline task metric over methods and severities, the correlation in each title."""
    datasets = [d for d in combined.datasets if not psnr_task_points(combined, d).empty]
    if not datasets:
        return None
    ncols = min(len(datasets), 2)
    nrows = -(-len(datasets) // ncols)
    fig = Figure(figsize=(4.6 * ncols + 1.8, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    severities = combined.rain_severities()
    for ax, ds in zip(axes, datasets, strict=False):
        metric = primary_metric(combined.datasets[ds])
        points = psnr_task_points(combined, ds, metric)
        for _, p in points.iterrows():
            big = p.method == "rainy"
            xerr = p.psnr_y_std if is_finite(p.psnr_y_std) else None
            yerr = p[f"{metric}_std"] if is_finite(p[f"{metric}_std"]) else None
            ax.errorbar(
                p.psnr_y,
                p[metric],
                xerr=xerr,
                yerr=yerr,
                linestyle="none",
                capsize=2,
                marker=severity_marker(p.severity, severities),
                color=colors[p.method],
                markersize=12 if big else 7,
                markerfacecolor="none" if big else colors[p.method],
                markeredgewidth=1.8 if big else 1.0,
                zorder=2 if big else 3,
            )
        clean = combined.value(ds, "none", "clean", metric)
        if clean and is_finite(clean[0]):
            ax.axhline(clean[0], color=colors["clean"], linestyle="--", linewidth=1.2)
        corr = correlation(points["psnr_y"].to_numpy(), points[metric].to_numpy())
        ax.set_title(f"{ds}\n{corr.text()}", fontsize=9)
        ax.set_xlabel("PSNR-Y (dB)")
        ax.set_ylabel(metric_axis_label(metric))
        ax.grid(alpha=0.3)
        ax.margins(0.12)
    for ax in axes[len(datasets) :]:
        ax.set_visible(False)
    methods = [m for m in combined.methods if m != "clean"]
    handles = [Line2D([], [], color=colors["clean"], linestyle="--", label="clean (no rain)")]
    handles += [
        Line2D(
            [],
            [],
            color=colors[m],
            marker="o",
            linestyle="none",
            markerfacecolor="none" if m == "rainy" else colors[m],
            label=m,
        )
        for m in methods
    ]
    handles += [
        Line2D([], [], color="#444444", marker=severity_marker(s, severities), linestyle="none", label=f"{s} rain")
        for s in severities
    ]
    _legend_outside(fig, handles, [h.get_label() for h in handles])
    return save_figure(fig, path)


def per_class_bars(combined: Combined, colors: dict[str, str], path: Path) -> Path | None:
    """Per-class AP (detection) / IoU (segmentation) of every method at each dataset's worst rain severity."""
    panels = []
    for ds, task in combined.datasets.items():
        sev = worst_severity(combined, ds)
        metric = next(iter(get_task(task).per_class.values())).key  # the task's headline per-class metric
        pc = combined.per_class
        rows = pc[(pc.dataset == ds) & (pc.metric == metric) & pc.severity.isin(["none", sev])]
        if sev is not None and not rows.empty:
            panels.append((ds, task, sev, metric, rows))
    if not panels:
        return None
    widest = max(r["class"].nunique() for *_, r in panels)
    fig = Figure(figsize=(min(max(7.0, 0.9 * widest + 3), 22), 3.4 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    handles, labels = [], []
    for ax, (ds, task, sev, metric, rows) in zip(axes, panels, strict=True):
        classes = list(dict.fromkeys(rows["class"]))
        methods = [m for m in combined.methods if m in set(rows.method)]
        width = 0.8 / len(methods)
        x = np.arange(len(classes))
        for k, method in enumerate(methods):
            m = rows[rows.method == method].set_index("class")
            y = np.array([m["mean"].get(c, np.nan) for c in classes], dtype=float)
            err = np.array([m["std"].get(c, np.nan) for c in classes], dtype=float)
            label = f"{method} (no rain)" if method == "clean" else method
            ax.bar(
                x + (k - (len(methods) - 1) / 2) * width,
                np.nan_to_num(y),
                width,
                color=colors[method],
                yerr=np.where(np.isfinite(err), err, 0) if np.isfinite(err).any() else None,
                label=label,
                capsize=2,
            )
        headline = primary_metric(task)
        drop = combined.value(ds, sev, "rainy", f"drop_{headline}")
        drop_text = f"; clean − rainy {metric_name(headline)} = {drop[0]:.3f}" if drop and is_finite(drop[0]) else ""
        ax.set_title(f"{ds}: per-class {metric_name(metric)} at {sev} rain (worst severity{drop_text})", fontsize=10)
        ax.set_xticks(x, classes, rotation=30 if len(classes) > 8 else 0, ha="right" if len(classes) > 8 else "center")
        ax.set_xlabel("class")
        ax.set_ylabel(metric_axis_label(metric))
        ax.grid(axis="y", alpha=0.3)
        h, lab = ax.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    _legend_outside(fig, *_unique(handles, labels), title="method")
    return save_figure(fig, path)


LOSS_STYLES = {"loss": "-", "loss_restore": "--", "loss_task": ":"}
TWIN_COLOR = "#444444"  # a validation task metric on the right axis


def training_curves(logs: Sequence[TrainingLog], colors: dict[str, str], path: Path) -> Path | None:
    """Per training log: loss terms (log scale) and validation metrics against the training step."""
    logs = [log for log in logs if not log.frame.empty]
    if not logs:
        return None
    fig = Figure(figsize=(11.5, 3.0 * len(logs)), layout="constrained")
    axes = fig.subplots(len(logs), 2, squeeze=False)
    for (ax_loss, ax_val), log in zip(axes, logs, strict=True):
        color = colors.get(log.method or "", PALETTE[-1])
        frame = log.frame
        for col in [c for c in frame.columns if c.startswith("loss")]:
            part = frame[["step", col]].dropna()
            if not part.empty:
                ax_loss.plot(part.step, part[col], LOSS_STYLES.get(col, "-."), color=color, label=col)
        if (frame.filter(like="loss").dropna(how="all") > 0).all().all():
            ax_loss.set_yscale("log")
        ax_loss.set_title(f"{log.label}: training loss", fontsize=10)
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("loss (log scale, unitless)")
        ax_loss.grid(alpha=0.3)
        ax_loss.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
        _validation_axes(ax_val, log, color)
    return save_figure(fig, path)


def _validation_axes(ax: object, log: TrainingLog, color: str) -> None:
    """Validation PSNR-Y on the left axis and a validation task metric (joint training) on a right axis."""
    frame = log.frame
    handles: list = []
    twin_axis = False
    psnr = frame[["step", "val_psnr_y"]].dropna() if "val_psnr_y" in frame else frame.iloc[0:0]
    if not psnr.empty:
        handles += ax.plot(psnr.step, psnr.val_psnr_y, "-o", color=color, markersize=3, label="val PSNR-Y (dB)")
    ax.set_xlabel("step")
    ax.set_ylabel("validation PSNR-Y (dB)")
    ax.set_title(f"{log.label}: validation", fontsize=10)
    ax.grid(alpha=0.3)
    task_cols = [c for c in frame.columns if c.startswith("val_") and c not in ("val_psnr_y", "val_ssim_y")]
    for col in task_cols:
        part = frame[["step", col]].dropna()
        if part.empty:
            continue
        twin = ax.twinx()
        metric = col.removeprefix("val_")
        handles += twin.plot(
            part.step,
            part[col],
            "--s",
            color=TWIN_COLOR,
            markersize=4,  # not the method colour:
            label=f"val {metric_name(metric)} (right axis)",
        )  # lines may coincide
        twin.set_ylabel(f"validation {metric_axis_label(metric)}")
        twin_axis = True
    if handles:  # right of the axes, past the twin axis' labels when there is one
        ax.legend(
            handles,
            [h.get_label() for h in handles],
            loc="upper left",
            bbox_to_anchor=(1.3 if twin_axis else 1.01, 1.0),
            frameon=False,
            fontsize=8,
        )
    else:
        ax.text(0.5, 0.5, "no validation rows in the log", ha="center", va="center", transform=ax.transAxes)
