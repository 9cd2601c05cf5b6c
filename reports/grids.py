"""Qualitative grids from the runs' ``samples/``: per image a row ground truth | clean | rainy | each derainer (real
rain: no clean), with the task model's prediction drawn on the image it saw (by the dataset's task: boxes with class
and score, class masks, instance masks), each panel titled with that image's PSNR-Y / SSIM-Y and task score (the
task's per-image metric, e.g. AP@.5 or mIoU of the single image)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from derain.imageio import read_image
from derain.synth import PRESETS
from downstream.drawing import DEFAULT_DRAWN, DISPLAY_CONF, is_background
from downstream.tasks import Task, get_task
from reports.plots import PALETTE, save_figure
from reports.runs import Combined, Run

MAX_OBJECTS = 10  # instances drawn per panel at most


@dataclass
class Panel:
    """One image of the grid with what the task model predicted on it."""

    title: str
    image: np.ndarray
    label: Any = None  # a prediction or the ground truth, as the task saved it
    caption: str = ""


def _folder(combined: Combined, dataset: str, severity: str, method: str, seed: int) -> tuple[Run, str, Path] | None:
    """The run (its own method name, the folder) whose ``samples/`` show ``method`` for ``dataset`` at ``severity``:
    among the runs that saved them, the first with rain seed ``seed``, else the first."""
    sev = "none" if method == "clean" else severity
    found = [(run, name, run.path / "samples" / dataset / sev / name) for run, name in combined.sources.get(method, [])]
    found = [f for f in found if f[2].is_dir()]
    return next((f for f in found if f[0].seed == seed), found[0] if found else None)


def _folders(combined: Combined, dataset: str, severity: str) -> dict[str, tuple[Run, str, Path]]:
    """The samples to show per method (clean, rainy, derainers; real rain: no clean), each from a run that saved
    them, all with the rain seed of the first run that saved rainy samples of this dataset and severity wherever
    another run of that seed has them (so the columns show the same rain)."""
    rainy = _folder(combined, dataset, severity, "rainy", combined.runs[0].seed)
    seed = rainy[0].seed if rainy else combined.runs[0].seed
    methods = ["clean", *[m for m in combined.methods_of(dataset, severity) if m != "clean"]]
    return {m: f for m in methods if (f := _folder(combined, dataset, severity, m, seed)) is not None}


def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.png") if not p.name.endswith(".mask.png"))


def class_names(run: Run, dataset: str) -> list[str]:
    """The dataset's class names in index order, from the run's per-class rows of the clean images (of its first
    condition for real rain, which has none); empty when unknown."""
    pc = run.per_class
    if pc.empty:
        return []
    rows = pc[pc.dataset == dataset]
    clean = rows[rows.method == "clean"]
    if clean.empty and not rows.empty:
        first = rows.iloc[0]
        clean = rows[(rows.severity == first.severity) & (rows.method == first.method)]
    return list(dict.fromkeys(clean["class"]))


def _image_scores(run: Run, dataset: str, severity: str, method: str, stem: str) -> dict[str, float]:
    """PSNR-Y / SSIM-Y of one sample image from the run's ``per_image.csv``."""
    pi = run.per_image
    if pi.empty or "image" not in pi.columns:
        return {}
    hit = pi[(pi.dataset == dataset) & (pi.severity == severity) & (pi.method == method)]
    hit = hit[hit.image.astype(str).map(lambda s: Path(s).stem) == stem]  # stems of this condition's rows only
    if "seed" in hit.columns and hit["seed"].notna().any():  # several rain seeds: the samples show the first
        hit = hit[hit["seed"].isna() | (hit["seed"] == run.seed)]
    if hit.empty:
        return {}
    return {k: float(hit.iloc[0][k]) for k in ("psnr_y", "ssim_y") if k in hit.columns and np.isfinite(hit.iloc[0][k])}


def image_task_score(task: Task, pred: Any, truth: Any, names: list[str]) -> tuple[str, float] | None:
    """The task score of one image against its ground truth: the task's per-image metric (AP@.5 with the COCO
    protocol on the single image, mIoU, ...)."""
    if pred is None or truth is None or not names:
        return None
    evaluator = task.evaluator(names)
    evaluator.update([pred], [truth], [0])
    return task.image_metric.heading, float(evaluator.compute()[task.image_metric.key])


def _caption(scores: dict[str, float], task: tuple[str, float] | None) -> str:
    parts = []
    if "psnr_y" in scores:
        parts.append(f"PSNR-Y {scores['psnr_y']:.2f} dB")
    if "ssim_y" in scores:
        parts.append(f"SSIM-Y {scores['ssim_y']:.3f}")
    if task is not None and np.isfinite(task[1]):
        parts.append(f"{task[0]} {task[1]:.3f}")
    return "\n".join([" · ".join(parts[:2]), *parts[2:]]) if parts else ""


def grid_panels(
    combined: Combined, dataset: str, severity: str, images: int = 3
) -> tuple[list[str], list[list[Panel]]]:
    """Image stems and, per image, the panels (ground truth when saved, clean, rainy, derainers; real rain: no
    clean) of one severity, each with the label the run saved (all predictions: :func:`sample_grid` picks what is
    drawn). A panel from a run of another rain seed than the rainy panel's says so in its title."""
    folders = _folders(combined, dataset, severity)
    base = "clean" if "clean" in folders else "rainy"  # real rain: the rainy image is the only one of the scene
    if base not in folders or not any(m != "clean" for m in folders):
        return [], []
    common = set.intersection(*(set(_stems(f)) for _, _, f in folders.values()))
    stems = [s for s in _stems(folders[base][2]) if s in common][:images]
    base_run = folders[base][0]
    seed = folders["rainy"][0].seed if "rainy" in folders else base_run.seed
    names = class_names(base_run, dataset)
    task = get_task(combined.datasets[dataset])
    truth_dir = base_run.path / "samples" / dataset / "truth"
    rows = []
    for stem in stems:
        truth = task.load_label(truth_dir, stem)
        row = []
        if truth is not None:
            row.append(Panel("ground truth", read_image(folders[base][2] / f"{stem}.png"), truth, task.describe(truth)))
        for method, (run, name, folder) in folders.items():
            pred = task.load_label(folder, stem)
            score = image_task_score(task, pred, truth, names)
            sev = "none" if method == "clean" else severity
            scores = _image_scores(run, dataset, sev, name, stem)
            title = method if run.seed == seed or sev not in PRESETS else f"{method} (seed {run.seed})"
            row.append(Panel(title, read_image(folder / f"{stem}.png"), pred, _caption(scores, score)))
        rows.append(row)
    return stems, rows


def _objects(label: Any) -> int:
    """How many instances a panel may draw: the ground truth's count (at most MAX_OBJECTS), else DEFAULT_DRAWN."""
    boxes = label.get("boxes") if isinstance(label, dict) else None
    return max(min(len(boxes), MAX_OBJECTS), 1) if boxes is not None else DEFAULT_DRAWN


def class_color(k: int) -> str:
    """The colour of class ``k`` in grids (boxes and mask overlays)."""
    return PALETTE[k % len(PALETTE)]


def sample_grid(
    combined: Combined, dataset: str, severity: str, path: Path, images: int = 3, conf: float = DISPLAY_CONF
) -> Path | None:
    """Draw and save the grid of one dataset and severity; None when the runs saved no samples for it."""
    stems, rows = grid_panels(combined, dataset, severity, images)
    if not rows:
        return None
    folders = _folders(combined, dataset, severity)
    base = folders.get("clean") or folders["rainy"]
    names = class_names(base[0], dataset)
    task = get_task(combined.datasets[dataset])
    ncols = max(len(r) for r in rows)
    h, w = rows[0][0].image.shape[:2]
    panel_w = 2.3
    fig = Figure(figsize=(panel_w * ncols + 1.6, (panel_w * h / w + 0.5) * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    used: set[int] = set()
    for r, (stem, row) in enumerate(zip(stems, rows, strict=True)):
        objects = _objects(row[0].label) if row[0].title == "ground truth" else DEFAULT_DRAWN
        for c, panel in enumerate(row):
            ax = axes[r][c]
            if panel.label is None:
                ax.imshow(np.clip(panel.image, 0, 1), interpolation="nearest")
            else:
                used |= task.draw(ax, panel.image, panel.label, names, class_color, objects=objects, conf=conf,
                                  px_per_pt=w / (panel_w * 72))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(panel.title, fontsize=9, fontweight="bold")
            ax.set_xlabel(panel.caption, fontsize=7)
            if c == 0:
                ax.set_ylabel(stem, fontsize=8)
        for ax in axes[r][len(row) :]:
            ax.set_visible(False)
    fig.suptitle(f"{dataset}, {severity} rain", fontsize=10)
    legend = [
        Patch(color=class_color(k), label=names[k] if k < len(names) else str(k))
        for k in sorted(used)
        if not is_background(k, names)
    ]
    if legend:
        fig.legend(handles=legend, loc="outside right upper", title="class", frameon=False, fontsize=8)
    return save_figure(fig, path)
