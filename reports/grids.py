"""Qualitative grids from a run's ``samples/``: per image a row ground truth | clean | rainy | each derainer, with
the detector's boxes (class, score) or the segmenter's mask drawn on the image the task model saw, each panel
titled with that image's PSNR-Y / SSIM-Y and task score (AP@.5 or mIoU of the single image)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from derain.imageio import read_image
from downstream.datasets import read_mask
from reports.plots import PALETTE, save_figure
from reports.runs import Combined, Run

MAX_BOXES = 10
DEFAULT_BOXES = 5  # boxes drawn per panel when the ground truth (and so its object count) is unknown
DISPLAY_IOU = 0.5  # drawn boxes overlap each other at most this much
DISPLAY_CONF = 0.25  # boxes below this confidence are not drawn (scoring keeps them: the COCO protocol needs them)
BACKGROUND_NAMES = {"background", "bg", "_background_"}


@dataclass
class Panel:
    """One image of the grid with what the task model predicted on it."""

    title: str
    image: np.ndarray
    boxes: dict | None = None  # {"boxes", "scores"?, "classes"}
    mask: np.ndarray | None = None
    caption: str = ""


def _source(combined: Combined, method: str) -> tuple[Run, str] | None:
    """The run (and its own method name) whose samples show ``method``: the first run's seed where possible, so all
    columns show the same rain."""
    sources = combined.sources.get(method) or []
    seed = combined.runs[0].seed
    return next((s for s in sources if s[0].seed == seed), sources[0] if sources else None)


def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.png") if not p.name.endswith(".mask.png"))


def class_names(run: Run, dataset: str) -> list[str]:
    """The dataset's class names in index order, from the run's per-class rows (indices as names if unknown)."""
    pc = run.per_class
    rows = pc[(pc.dataset == dataset) & (pc.method == "clean")] if not pc.empty else pc
    return list(dict.fromkeys(rows["class"])) if not rows.empty else []


def _read_prediction(folder: Path, stem: str) -> tuple[dict | None, np.ndarray | None]:
    if (folder / f"{stem}.json").is_file():
        return json.loads((folder / f"{stem}.json").read_text()), None
    if (folder / f"{stem}.mask.png").is_file():
        return None, read_mask(folder / f"{stem}.mask.png")
    return None, None


def _image_scores(run: Run, dataset: str, severity: str, method: str, stem: str) -> dict[str, float]:
    """PSNR-Y / SSIM-Y of one sample image from the run's ``per_image.csv``."""
    pi = run.per_image
    if pi.empty or "image" not in pi.columns:
        return {}
    hit = pi[
        (pi.dataset == dataset)
        & (pi.severity == severity)
        & (pi.method == method)
        & (pi.image.astype(str).map(lambda s: Path(s).stem) == stem)
    ]
    if "seed" in hit.columns and hit["seed"].notna().any():  # several rain seeds: the samples show the first
        hit = hit[hit["seed"].isna() | (hit["seed"] == run.seed)]
    if hit.empty:
        return {}
    return {k: float(hit.iloc[0][k]) for k in ("psnr_y", "ssim_y") if k in hit.columns and np.isfinite(hit.iloc[0][k])}


def image_task_score(
    boxes: dict | None,
    mask: np.ndarray | None,
    truth_boxes: dict | None,
    truth_mask: np.ndarray | None,
    names: list[str],
) -> tuple[str, float] | None:
    """The task score of one image against its ground truth: AP@.5 (COCO protocol on the single image) or mIoU."""
    if boxes is not None and truth_boxes is not None:
        from eval.detection import DetectionEvaluator

        evaluator = DetectionEvaluator(names or [str(i) for i in range(_n_classes(boxes, truth_boxes))])
        evaluator.update([boxes], [truth_boxes], [0])
        return "AP@.5", float(evaluator.compute()["map50"])
    if mask is not None and truth_mask is not None:
        import torch

        from eval.segmentation import ConfusionMatrix

        n = max(len(names), int(max(mask.max(), truth_mask[truth_mask != 255].max(initial=0))) + 1)
        matrix = ConfusionMatrix(n).update(torch.from_numpy(mask), torch.from_numpy(truth_mask))
        return "mIoU", matrix.miou()
    return None


def _n_classes(*labels: dict) -> int:
    return int(max((max(lab["classes"], default=-1) for lab in labels), default=-1)) + 1


def _caption(scores: dict[str, float], task: tuple[str, float] | None) -> str:
    parts = []
    if "psnr_y" in scores:
        parts.append(f"PSNR-Y {scores['psnr_y']:.2f} dB")
    if "ssim_y" in scores:
        parts.append(f"SSIM-Y {scores['ssim_y']:.3f}")
    if task is not None and np.isfinite(task[1]):
        parts.append(f"{task[0]} {task[1]:.3f}")
    return "\n".join([" · ".join(parts[:2]), *parts[2:]]) if parts else ""


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def display_boxes(pred: dict, k: int, overlap: float = DISPLAY_IOU, conf: float = DISPLAY_CONF) -> dict:
    """Up to ``k`` boxes to draw: highest score first, none below ``conf``, skipping any that overlaps a kept one
    by IoU > ``overlap`` whatever its class (the detector keeps such duplicates of other classes; drawn, they hide
    each other). Boxes without scores (ground truth) are all candidates."""
    scores = np.asarray(pred.get("scores", [1.0] * len(pred["boxes"])), dtype=float)
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if len(kept) == k or scores[i] < conf:
            break
        if all(_iou(pred["boxes"][i], pred["boxes"][j]) <= overlap for j in kept):
            kept.append(int(i))
    return {
        "boxes": [pred["boxes"][i] for i in kept],
        "scores": scores[kept].tolist(),
        "classes": [pred["classes"][i] for i in kept],
    }


def grid_panels(
    combined: Combined, dataset: str, severity: str, images: int = 3, conf: float = DISPLAY_CONF
) -> tuple[list[str], list[list[Panel]]]:
    """Image stems and, per image, the panels (ground truth when saved, clean, rainy, derainers) of one severity;
    detections are drawn from confidence ``conf`` up."""
    methods = ["clean", *[m for m in combined.methods_of(dataset, severity) if m != "clean"]]
    folders: dict[str, tuple[Run, str, Path]] = {}
    for method in methods:
        src = _source(combined, method)
        if src is None:
            continue
        sev = "none" if method == "clean" else severity
        folder = src[0].path / "samples" / dataset / sev / src[1]
        if folder.is_dir():
            folders[method] = (src[0], src[1], folder)
    if "clean" not in folders or len(folders) < 2:
        return [], []
    common = set.intersection(*(set(_stems(f)) for _, _, f in folders.values()))
    stems = [s for s in _stems(folders["clean"][2]) if s in common][:images]
    clean_run = folders["clean"][0]
    names = class_names(clean_run, dataset)
    truth_dir = clean_run.path / "samples" / dataset / "truth"
    rows = []
    for stem in stems:
        truth_boxes, truth_mask = _read_prediction(truth_dir, stem)
        n_boxes = min(len(truth_boxes["boxes"]), MAX_BOXES) if truth_boxes else DEFAULT_BOXES
        clean_image = read_image(folders["clean"][2] / f"{stem}.png")
        row = []
        if truth_boxes is not None or truth_mask is not None:
            n_obj = f"{len(truth_boxes['boxes'])} objects" if truth_boxes else "label mask"
            row.append(Panel("ground truth", clean_image, truth_boxes, truth_mask, n_obj))
        for method, (run, name, folder) in folders.items():
            boxes, mask = _read_prediction(folder, stem)
            task = image_task_score(boxes, mask, truth_boxes, truth_mask, names)
            sev = "none" if method == "clean" else severity
            scores = _image_scores(run, dataset, sev, name, stem)
            shown = display_boxes(boxes, max(n_boxes, 1), conf=conf) if boxes is not None else None
            row.append(Panel(method, read_image(folder / f"{stem}.png"), shown, mask, _caption(scores, task)))
        rows.append(row)
    return stems, rows


def class_color(k: int) -> str:
    """The colour of class ``k`` in grids (boxes and mask overlays)."""
    return PALETTE[k % len(PALETTE)]


LABEL_PT = 5.5  # box label font size (points)


def _label_spot(box: Sequence[float], size: tuple[float, float], taken: list[tuple[float, ...]]) -> tuple[float, float]:
    """Top-left corner (image pixels) for a box's label: inside its top edge, else inside its bottom edge, else
    above it — the first spot that does not cover a label already placed."""
    x1, y1, x2, y2 = box
    w, h = size
    spots = [(x1 + 1, y1 + 1), (x1 + 1, y2 - h - 1), (x1, y1 - h - 1), (x1 + 1, y1 + h + 2)]
    for x, y in spots:
        if all(x + w <= a or a + c <= x or y + h <= b or b + d <= y for a, b, c, d in taken):
            return x, y
    return spots[0]


def _draw_boxes(ax: object, pred: dict, names: list[str], px_per_pt: float) -> None:
    """Boxes in their class colour, labelled ``class score``; labels are moved so they do not cover each other."""
    scores = pred.get("scores")
    taken: list[tuple[float, ...]] = []
    for i, (box, cls) in enumerate(zip(pred["boxes"], pred["classes"], strict=True)):
        x1, y1, x2, y2 = box
        color = class_color(int(cls))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.4))
        name = names[int(cls)] if int(cls) < len(names) else str(int(cls))
        text = f"{name} {scores[i]:.2f}" if scores is not None else name
        size = ((0.62 * len(text) + 0.6) * LABEL_PT * px_per_pt, 1.5 * LABEL_PT * px_per_pt)
        x, y = _label_spot(box, size, taken)
        taken.append((x, y, *size))
        ax.text(
            x,
            y,
            text,
            fontsize=LABEL_PT,
            color="white",
            va="top",
            ha="left",
            clip_on=True,
            bbox={"facecolor": color, "edgecolor": "none", "pad": 0.8, "alpha": 0.85},
        )


def _mask_overlay(image: np.ndarray, mask: np.ndarray, names: list[str], alpha: float = 0.6) -> np.ndarray:
    """The image in grey (so the scene's own colours cannot pass for classes) with every non-background class
    tinted in its colour."""
    from matplotlib.colors import to_rgb

    grey = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = np.repeat(grey[..., None], 3, axis=2)
    for k in np.unique(mask):
        if k == 255 or (k < len(names) and names[k].lower() in BACKGROUND_NAMES):
            continue
        sel = mask == k
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(to_rgb(class_color(int(k))))
    return out


def sample_grid(
    combined: Combined, dataset: str, severity: str, path: Path, images: int = 3, conf: float = DISPLAY_CONF
) -> Path | None:
    """Draw and save the grid of one dataset and severity; None when the runs saved no samples for it."""
    stems, rows = grid_panels(combined, dataset, severity, images, conf)
    if not rows:
        return None
    src = _source(combined, "clean")
    names = class_names(src[0], dataset) if src else []
    ncols = max(len(r) for r in rows)
    h, w = rows[0][0].image.shape[:2]
    panel_w = 2.3
    fig = Figure(figsize=(panel_w * ncols + 1.6, (panel_w * h / w + 0.5) * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    used: set[int] = set()
    for r, (stem, row) in enumerate(zip(stems, rows, strict=True)):
        for c, panel in enumerate(row):
            ax = axes[r][c]
            image = panel.image
            if panel.mask is not None:
                image = _mask_overlay(image, panel.mask, names)
                used |= {int(k) for k in np.unique(panel.mask) if k != 255}
            ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
            if panel.boxes is not None:
                _draw_boxes(ax, panel.boxes, names, px_per_pt=w / (panel_w * 72))
                used |= {int(k) for k in panel.boxes["classes"]}
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
        if not (k < len(names) and names[k].lower() in BACKGROUND_NAMES)
    ]
    if legend:
        fig.legend(handles=legend, loc="outside right upper", title="class", frameon=False, fontsize=8)
    return save_figure(fig, path)
