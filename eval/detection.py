"""COCO-protocol detection scoring with pycocotools: mAP@[.5:.95], mAP@.5 and per-class AP.

Predictions are per image ``{"boxes": N×4 xyxy pixels, "scores": N, "classes": N int}`` (what
``downstream.detection.Detector.predict`` returns); targets are ``{"boxes": N×4 xyxy, "classes": N}``
(what detection datasets return). Class index ``k`` maps to COCO category id ``category_ids[k]``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _np(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """Tensor / array / list → numpy array (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _category_id(category_ids: Sequence[int] | Mapping[int, int] | None, k: int) -> int:
    return int(k) if category_ids is None else int(category_ids[int(k)])


def category_ids_from_gt(gt: dict) -> list[int]:
    """Category ids of a COCO GT dict sorted ascending: class index ``k`` → ``ids[k]``."""
    return sorted(int(c["id"]) for c in gt.get("categories", []))


def predictions_to_coco(
    preds: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    category_ids: Sequence[int] | Mapping[int, int] | None = None,
) -> list[dict]:
    """Per-image predictions → COCO result rows ``{image_id, category_id, bbox: [x, y, w, h], score}``.

    ``category_ids`` maps class index → COCO category id (identity when None).
    """
    if len(preds) != len(image_ids):
        raise ValueError(f"{len(preds)} predictions for {len(image_ids)} image ids")
    rows: list[dict] = []
    for pred, image_id in zip(preds, image_ids, strict=True):
        boxes = _np(pred["boxes"]).reshape(-1, 4)
        scores = _np(pred["scores"]).reshape(-1)
        classes = _np(pred["classes"], np.int64).reshape(-1)
        for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist(), strict=True):
            rows.append(
                {
                    "image_id": int(image_id),
                    "category_id": _category_id(category_ids, c),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(s),
                }
            )
    return rows


def _coco_from_dict(gt: dict) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.dataset.setdefault("info", {})
    coco.dataset.setdefault("licenses", [])
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _class_ap(precision: np.ndarray, k: int, iou_index: int | None = None) -> float:
    """AP of category column ``k`` from COCOeval's precision [T, R, K, A, M] (area all, max dets last)."""
    p = precision[:, :, k, 0, -1] if iou_index is None else precision[iou_index, :, k, 0, -1]
    p = p[p > -1]
    return float(p.mean()) if p.size else math.nan


def coco_map(gt: dict, results: list[dict], max_dets: int = 100, image_stats: bool = False) -> dict[str, Any]:
    """Score COCO result rows against a COCO GT dict with pycocotools' bbox protocol.

    Returns ``{"map": mAP@[.5:.95], "map50": mAP@.5, "per_class": {name: AP@[.5:.95]},
    "per_class50": {name: AP@.5}}``. No results → 0.0 (NaN for categories without GT objects);
    pycocotools' printing is suppressed. ``max_dets`` is the per-image detection cap (COCO uses 100).
    ``image_stats`` adds ``"image_stats"``: the per-image statistics the bootstrap resamples
    (:func:`eval.bootstrap.detection_image_stats`, images in the order of ``gt["images"]``).
    """
    from pycocotools.cocoeval import COCOeval

    from eval.bootstrap import detection_image_stats

    categories = sorted(gt.get("categories", []), key=lambda c: int(c["id"]))
    names = [str(c.get("name", c["id"])) for c in categories]
    image_ids = [int(im["id"]) for im in gt.get("images", [])]
    coco_gt = _coco_from_dict(gt)
    has_gt = {int(c["id"]): len(coco_gt.getAnnIds(catIds=[int(c["id"])])) > 0 for c in categories}
    if not results:
        zero = {n: (0.0 if has_gt[int(c["id"])] else math.nan) for n, c in zip(names, categories, strict=True)}
        overall = 0.0 if any(has_gt.values()) else math.nan
        out = {"map": overall, "map50": overall, "per_class": zero, "per_class50": dict(zero)}
        if image_stats:
            out["image_stats"] = _no_detection_stats(gt, image_ids, categories)
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds keys to each row, never edits bbox
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.maxDets = [1, 10, max_dets]
        # Only area "all" is reported: evaluating small/medium/large too would quadruple COCOeval's per-image loop
        # (the numbers for "all" are the same either way; summarize() leaves -1 for the dropped ranges).
        ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]
    cat_index = {int(c): k for k, c in enumerate(ev.params.catIds)}
    per_class = {n: _class_ap(precision, cat_index[int(c["id"])]) for n, c in zip(names, categories, strict=True)}
    per_class50 = {n: _class_ap(precision, cat_index[int(c["id"])], 0) for n, c in zip(names, categories, strict=True)}

    def stat(v: float) -> float:
        return math.nan if v < 0 else float(v)

    out = {"map": stat(ev.stats[0]), "map50": stat(ev.stats[1]), "per_class": per_class, "per_class50": per_class50}
    if image_stats:
        out["image_stats"] = detection_image_stats(ev, image_ids, max_det=max_dets)
    return out


def _no_detection_stats(gt: dict, image_ids: list[int], categories: list[dict]) -> dict[str, Any]:
    """Bootstrap statistics of a run without any detection: only the ground-truth counts matter."""
    index = {i: n for n, i in enumerate(image_ids)}
    cats = []
    for c in categories:
        npos = [0] * len(image_ids)
        for a in gt.get("annotations", []):
            if int(a["category_id"]) == int(c["id"]) and not a.get("iscrowd", 0):
                npos[index[int(a["image_id"])]] += 1
        cats.append({"scores": [], "images": [], "tp": [], "ignore": [], "npos": npos})
    return {"categories": cats, "iou_thresholds": np.linspace(0.5, 0.95, 10).tolist(), "images": len(image_ids)}


class DetectionEvaluator:
    """Accumulates predictions and targets batch by batch, then scores them with :func:`coco_map`.

    Ground truth is built from the targets fed in (xyxy pixel boxes, class indices), so no COCO file is
    needed; ``names`` gives the class names (index ``k`` → category id ``k``).
    """

    def __init__(self, names: Sequence[str], max_dets: int = 100) -> None:
        self.names = list(names)
        self.max_dets = max_dets
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._images: list[dict] = []
        self._annotations: list[dict] = []
        self._results: list[dict] = []
        self._seen: set[int] = set()

    def update(
        self,
        preds: Sequence[Mapping[str, Any]],
        targets: Sequence[Mapping[str, Any]],
        image_ids: Sequence[int],
    ) -> None:
        """Add one batch: per-image predictions, per-image targets and their (unique) integer image ids."""
        if not len(preds) == len(targets) == len(image_ids):
            raise ValueError(f"batch sizes differ: {len(preds)} preds, {len(targets)} targets, {len(image_ids)} ids")
        for target, image_id in zip(targets, image_ids, strict=True):
            image_id = int(image_id)
            if image_id in self._seen:
                raise ValueError(f"image id {image_id} was already added")
            self._seen.add(image_id)
            self._images.append({"id": image_id})
            boxes = _np(target["boxes"]).reshape(-1, 4)
            classes = _np(target["classes"], np.int64).reshape(-1)
            for (x1, y1, x2, y2), c in zip(boxes.tolist(), classes.tolist(), strict=True):
                w, h = x2 - x1, y2 - y1
                self._annotations.append(
                    {
                        "id": len(self._annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(c),
                        "bbox": [x1, y1, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        self._results.extend(predictions_to_coco(preds, image_ids))

    def gt_dict(self) -> dict:
        """The COCO GT dict built from the targets so far."""
        return {
            "images": list(self._images),
            "annotations": list(self._annotations),
            "categories": [{"id": k, "name": n} for k, n in enumerate(self.names)],
        }

    def compute(self, image_stats: bool = False) -> dict[str, Any]:
        """Score everything accumulated (see :func:`coco_map`; ``image_stats`` for the bootstrap)."""
        return coco_map(self.gt_dict(), self._results, max_dets=self.max_dets, image_stats=image_stats)
