"""Drawing labels and predictions over images on matplotlib axes: class-coloured boxes with labels that avoid each
other, and class-tinted masks over a grey image. The tasks' :meth:`~downstream.tasks.Task.draw` use these; colours
come from the caller (``color_of(class id) -> colour``), so reports keep one palette."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DISPLAY_IOU = 0.5  # drawn boxes overlap each other at most this much
DISPLAY_CONF = 0.25  # boxes below this confidence are not drawn (scoring keeps them: the COCO protocol needs them)
LABEL_PT = 5.5  # box label font size (points)
DEFAULT_DRAWN = 5  # instances drawn per panel when the ground truth (and so its object count) is unknown
BACKGROUND_NAMES = {"background", "bg", "_background_"}


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def display_indices(pred: dict, k: int, overlap: float = DISPLAY_IOU, conf: float = DISPLAY_CONF) -> list[int]:
    """Up to ``k`` instances to draw: highest score first, none below ``conf``, skipping any whose box overlaps a
    kept one by IoU > ``overlap`` whatever its class (the detector keeps such duplicates of other classes; drawn,
    they hide each other). Instances without scores (ground truth) are all candidates."""
    boxes = [list(map(float, b)) for b in pred["boxes"]]
    scores = np.asarray(pred.get("scores", [1.0] * len(boxes)), dtype=float)
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if len(kept) == k or scores[i] < conf:
            break
        if all(_iou(boxes[i], boxes[j]) <= overlap for j in kept):
            kept.append(int(i))
    return kept


def display_boxes(pred: dict, k: int, overlap: float = DISPLAY_IOU, conf: float = DISPLAY_CONF) -> dict:
    """``pred`` reduced to the boxes :func:`display_indices` picks (``boxes``, ``scores``, ``classes``)."""
    kept = display_indices(pred, k, overlap, conf)
    scores = np.asarray(pred.get("scores", [1.0] * len(pred["boxes"])), dtype=float)
    return {"boxes": [pred["boxes"][i] for i in kept], "scores": scores[kept].tolist(),
            "classes": [pred["classes"][i] for i in kept]}


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


def draw_boxes(ax: Any, pred: dict, names: Sequence[str], color_of: Callable[[int], str], px_per_pt: float) -> None:
    """Boxes in their class colour, labelled ``class score``; labels are moved so they do not cover each other."""
    from matplotlib.patches import Rectangle

    scores = pred.get("scores")
    taken: list[tuple[float, ...]] = []
    for i, (box, cls) in enumerate(zip(pred["boxes"], pred["classes"], strict=True)):
        x1, y1, x2, y2 = box
        color = color_of(int(cls))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.4))
        name = names[int(cls)] if int(cls) < len(names) else str(int(cls))
        text = f"{name} {scores[i]:.2f}" if scores is not None else name
        size = ((0.62 * len(text) + 0.6) * LABEL_PT * px_per_pt, 1.5 * LABEL_PT * px_per_pt)
        x, y = _label_spot(box, size, taken)
        taken.append((x, y, *size))
        ax.text(x, y, text, fontsize=LABEL_PT, color="white", va="top", ha="left", clip_on=True,
                bbox={"facecolor": color, "edgecolor": "none", "pad": 0.8, "alpha": 0.85})


def grey(image: np.ndarray) -> np.ndarray:
    """``image`` (H×W×3) in grey, so the scene's own colours cannot pass for classes under a tint."""
    g = np.asarray(image, np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(g[..., None], 3, axis=2)


def tint(image: np.ndarray, where: np.ndarray, color: str, alpha: float = 0.6) -> np.ndarray:
    """``image`` with the pixels ``where`` (H×W bool) blended towards ``color`` (in place; returned)."""
    from matplotlib.colors import to_rgb

    image[where] = (1 - alpha) * image[where] + alpha * np.asarray(to_rgb(color))
    return image


def is_background(k: int, names: Sequence[str]) -> bool:
    return k < len(names) and names[k].lower() in BACKGROUND_NAMES


def mask_overlay(image: np.ndarray, mask: np.ndarray, names: Sequence[str], color_of: Callable[[int], str],
                 alpha: float = 0.6) -> np.ndarray:
    """The image in grey with every non-background class of ``mask`` (H×W class ids, 255 = ignore) tinted in its
    colour."""
    out = grey(image)
    for k in np.unique(mask):
        if k != 255 and not is_background(int(k), names):
            tint(out, mask == k, color_of(int(k)), alpha)
    return out
