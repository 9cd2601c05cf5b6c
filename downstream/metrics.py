"""Task metrics, the one module for them: the COCO protocol (pycocotools) for boxes and instance masks, and the
summed confusion matrix for semantic segmentation, each behind one evaluator interface.

Evaluators (:class:`Evaluator`) accumulate batch by batch and score at the end::

    ev.reset()
    ev.update(preds, targets, image_ids)     # per-image predictions and labels, unique int image ids
    ev.compute(image_stats=False) -> dict    # dataset metrics (+ "image_stats" for the bootstrap)

They live below their users (the benchmark runner, joint training's validation, report grids): metric arithmetic
never imports upward. ``image_stats`` is a list of ``{"kind", "prefix", "stats"}`` entries, the per-image
statistics from which ``eval.bootstrap`` recomputes the metrics of resampled image sets (kind ``coco``: per
category the detections' scores and match flags plus each image's ground-truth count; kind ``voc``: per category
the detections' scores, images and VOC devkit match flags plus each image's count of non-difficult objects; kind
``confusion``: per image and class the true-positive, false-positive and false-negative pixels); ``prefix`` is put
before the names of the metrics recomputed from it (``mask_`` for instance masks).

Detection protocols: COCO (pycocotools' ``COCOeval``: a detection matched to an ``iscrowd`` region — COCO crowd,
BDD100K's ignored categories and crowd labels, VOC's difficult objects, as the dataset readers write them — is
neither a true nor a false positive, crowd regions match by intersection over the detection's area and are never
missed) and, for VOC sets, the VOC devkit's AP@.5 (:func:`voc_map`).

Segmentation protocol (DESIGN.md §5): mIoU is the mean over classes of IoU computed from the confusion matrix
summed over ALL images (not a mean of per-image mIoUs); target pixels equal to ``ignore_index`` (255) are skipped;
a class absent from both predictions and targets has IoU NaN and is left out of the mean.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from downstream.datasets import IGNORE_INDEX


class Evaluator(Protocol):
    """What every task's evaluator offers (see the module docstring)."""

    def reset(self) -> None: ...

    def update(self, preds: Sequence[Any], targets: Sequence[Any], image_ids: Sequence[int]) -> None: ...

    def compute(self, image_stats: bool = False) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------------------------ COCO protocol
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
    """Per-image predictions → COCO result rows ``{image_id, category_id, bbox: [x, y, w, h], score}``, plus
    ``segmentation`` (compressed RLE, string counts) where a prediction has ``masks`` (N×H×W bool).

    ``category_ids`` maps class index → COCO category id (identity when None).
    """
    if len(preds) != len(image_ids):
        raise ValueError(f"{len(preds)} predictions for {len(image_ids)} image ids")
    rows: list[dict] = []
    for pred, image_id in zip(preds, image_ids, strict=True):
        boxes = _np(pred["boxes"]).reshape(-1, 4)
        scores = _np(pred["scores"]).reshape(-1)
        classes = _np(pred["classes"], np.int64).reshape(-1)
        rles = masks_to_rle(pred["masks"]) if "masks" in pred else [None] * len(boxes)
        if len(rles) != len(boxes):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes but {len(rles)} masks")
        for (x1, y1, x2, y2), s, c, rle in zip(boxes.tolist(), scores.tolist(), classes.tolist(), rles, strict=True):
            row = {"image_id": int(image_id), "category_id": _category_id(category_ids, c),
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
            if rle is not None:
                row["segmentation"] = rle
            rows.append(row)
    return rows


def masks_to_rle(masks: Any) -> list[dict[str, Any]]:
    """``N×H×W`` boolean masks → COCO compressed RLEs ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    from pycocotools import mask as mask_utils

    m = _np(masks, np.uint8)
    if m.ndim != 3:
        raise ValueError(f"masks must be N×H×W, got shape {m.shape}")
    rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0))) if len(m) else []
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


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


def coco_map(gt: dict, results: list[dict], max_dets: int = 100, image_stats: bool = False,
             iou_type: str = "bbox") -> dict[str, Any]:
    """Score COCO result rows against a COCO GT dict with pycocotools' protocol (``iou_type`` "bbox" or "segm").

    Returns ``{"map": mAP@[.5:.95], "map50": mAP@.5, "per_class": {name: AP@[.5:.95]},
    "per_class50": {name: AP@.5}}``. No results → 0.0 (NaN for categories without GT objects);
    pycocotools' printing is suppressed. ``max_dets`` is the per-image detection cap (COCO uses 100).
    ``image_stats`` adds ``"image_stats"``: the per-image statistics the bootstrap resamples
    (:func:`detection_image_stats`, images in the order of ``gt["images"]``).
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
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
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
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


def detection_image_stats(ev: Any, image_ids: Sequence[int], max_det: int = 100) -> dict[str, Any]:
    """Per-category detection statistics from an evaluated ``COCOeval`` (``ev.evaluate()`` has run), for
    ``eval.bootstrap.detection_metrics``: the arrays COCO's ``accumulate`` uses (area "all", ``max_det`` detections
    per image), with each detection's image as an index into ``image_ids``. JSON-serialisable (lists)."""
    index = {int(i): n for n, i in enumerate(image_ids)}
    n_area = len(ev.params.areaRng)
    n_img = len(ev.params.imgIds)
    cats = []
    for k in range(len(ev.params.catIds)):
        scores, images, matches, ignores = [], [], [], []
        npos = np.zeros(len(image_ids), dtype=np.int64)
        for i, image_id in enumerate(ev.params.imgIds):  # COCO's order: categories outer, areas, images inner
            e = ev.evalImgs[k * n_area * n_img + i]  # area index 0 = "all"
            if e is None:
                continue
            if e["maxDet"] != max_det:
                raise ValueError(f"COCOeval was run with maxDet {e['maxDet']}, expected {max_det}")
            n = min(len(e["dtScores"]), max_det)
            scores += list(e["dtScores"][:n])
            images += [index[int(image_id)]] * n
            matches.append(np.asarray(e["dtMatches"])[:, :n] > 0)
            ignores.append(np.asarray(e["dtIgnore"])[:, :n].astype(bool))
            npos[index[int(image_id)]] += int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        cats.append({
            "scores": [float(x) for x in scores],
            "images": images,
            "tp": pack_flags(np.concatenate(matches, axis=1).T) if matches else [],
            "ignore": pack_flags(np.concatenate(ignores, axis=1).T) if ignores else [],
            "npos": npos.tolist(),
        })
    return {"categories": cats, "iou_thresholds": list(map(float, ev.params.iouThrs)), "images": len(image_ids)}


def pack_flags(flags: np.ndarray) -> list[int]:
    """``(D, T)`` booleans -> D ints, bit ``j`` = IoU threshold ``j`` (keeps cell files small)."""
    return (flags.astype(np.int64) << np.arange(flags.shape[1])).sum(axis=1).tolist()


def unpack_flags(bits: Sequence[int], t: int) -> np.ndarray:
    """The inverse of :func:`pack_flags`: ``(D, t)`` booleans."""
    return ((np.asarray(bits, dtype=np.int64).reshape(-1, 1) >> np.arange(t)) & 1).astype(bool)


class DetectionEvaluator:
    """Accumulates box predictions batch by batch, then scores them with :func:`coco_map` (and, with ``voc``, the
    VOC devkit's AP: :func:`voc_map`).

    Two sources of ground truth:

    * ``ground_truth`` (what the benchmark uses): the dataset's own COCO ground truth (``to_coco_dict``: its image
      and category ids, crowd / ignored / difficult objects as ``iscrowd=1`` regions, boxes as the official
      evaluator reads them). ``update``'s ``image_ids`` are the dataset's image ids; each image's annotations come
      from ``ground_truth`` (its targets are only counted against them), so crowd regions are scored exactly as
      pycocotools scores them. Prediction class ``k`` is written as category ``ids[k]`` (the GT's category ids in
      ascending order), so :meth:`results` loads with ``COCO.loadRes`` against the dataset's own annotation file.
    * none: the ground truth is built from the targets fed in (xyxy pixel boxes, class indices, no crowd regions;
      category id = class index), e.g. for joint training's validation crops.

    Predictions are ``{"boxes": N×4 xyxy, "scores": N, "classes": N}``, targets ``{"boxes": N×4 xyxy, "classes":
    N}``.
    """

    def __init__(self, names: Sequence[str], max_dets: int = 100, ground_truth: Mapping[str, Any] | None = None,
                 voc: bool = False) -> None:
        self.names = list(names)
        self.max_dets = max_dets
        self.voc = voc
        self.ground_truth = ground_truth
        self.category_ids: list[int] | None = None
        if ground_truth is not None:
            self.category_ids = category_ids_from_gt(dict(ground_truth))
            if len(self.category_ids) != len(self.names):
                raise ValueError(f"{len(self.names)} class names but the ground truth has {len(self.category_ids)} "
                                 "categories")
            self._gt_images = {int(im["id"]): im for im in ground_truth["images"]}
            self._gt_annotations: dict[int, list[dict]] = {}
            for ann in ground_truth["annotations"]:
                self._gt_annotations.setdefault(int(ann["image_id"]), []).append(ann)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._images: list[dict] = []
        self._annotations: list[dict] = []
        self._results: list[dict] = []
        self._seen: set[int] = set()

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]],
               image_ids: Sequence[int]) -> None:
        """Add one batch: per-image predictions, per-image targets and their (unique) integer image ids."""
        if not len(preds) == len(targets) == len(image_ids):
            raise ValueError(f"batch sizes differ: {len(preds)} preds, {len(targets)} targets, {len(image_ids)} ids")
        for target, image_id in zip(targets, image_ids, strict=True):
            image_id = int(image_id)
            if image_id in self._seen:
                raise ValueError(f"image id {image_id} was already added")
            self._seen.add(image_id)
            if self.ground_truth is None:
                self._images.append(self._image_entry(target, image_id))
                self._annotations += self.annotations(target, image_id, len(self._annotations) + 1)
            else:
                self._add_ground_truth(target, image_id)
        self._results.extend(predictions_to_coco(preds, image_ids, self.category_ids))

    def _add_ground_truth(self, target: Mapping[str, Any], image_id: int) -> None:
        """Image ``image_id`` of ``ground_truth``; its targets must be its non-crowd annotations (same count)."""
        if image_id not in self._gt_images:
            raise ValueError(f"image id {image_id} is not in the ground truth")
        anns = self._gt_annotations.get(image_id, [])
        n_targets = len(_np(target["classes"], np.int64).reshape(-1))
        if n_targets != sum(not a.get("iscrowd", 0) for a in anns):
            raise ValueError(f"image {image_id}: {n_targets} targets but the ground truth has "
                             f"{sum(not a.get('iscrowd', 0) for a in anns)} non-crowd annotations")
        self._images.append(self._gt_images[image_id])
        self._annotations += anns

    def _image_entry(self, target: Mapping[str, Any], image_id: int) -> dict[str, Any]:
        return {"id": image_id}

    def annotations(self, target: Mapping[str, Any], image_id: int, first_id: int) -> list[dict[str, Any]]:
        """COCO annotations of one image's target, ids from ``first_id``."""
        boxes = _np(target["boxes"]).reshape(-1, 4)
        classes = _np(target["classes"], np.int64).reshape(-1)
        out = []
        for k, ((x1, y1, x2, y2), c) in enumerate(zip(boxes.tolist(), classes.tolist(), strict=True)):
            w, h = x2 - x1, y2 - y1
            out.append({"id": first_id + k, "image_id": image_id, "category_id": int(c), "bbox": [x1, y1, w, h],
                        "area": w * h, "iscrowd": 0})
        return out

    def gt_dict(self) -> dict:
        """The COCO ground truth of the images added so far (what :meth:`compute` scores; with ``ground_truth``,
        its entries for these images, in the order they were added)."""
        if self.ground_truth is not None:
            return {**{k: v for k, v in self.ground_truth.items() if k not in ("images", "annotations")},
                    "images": list(self._images), "annotations": list(self._annotations)}
        return {
            "images": list(self._images),
            "annotations": list(self._annotations),
            "categories": [{"id": k, "name": n} for k, n in enumerate(self.names)],
        }

    def results(self) -> list[dict]:
        """The COCO result rows of the predictions so far (category ids of the ground truth, else class index)."""
        return list(self._results)

    def compute(self, image_stats: bool = False) -> dict[str, Any]:
        """Score everything accumulated (see :func:`coco_map`, and :func:`voc_map` with ``voc``); ``image_stats``
        adds the bootstrap's statistics."""
        gt = self.gt_dict()
        out = coco_map(gt, self._results, max_dets=self.max_dets, image_stats=image_stats)
        stats = [{"kind": "coco", "prefix": "", "stats": out.pop("image_stats")}] if image_stats else []
        if self.voc:
            voc = voc_map(gt, self._results, image_stats=image_stats)
            if image_stats:
                stats.append({"kind": "voc", "prefix": "", "stats": voc.pop("image_stats")})
            out.update(voc)
        if image_stats:
            out["image_stats"] = stats
        return out


# -------------------------------------------------------------------------------------------- Pascal VOC protocol
VOC_IOU = 0.5
VOC07_RECALLS = np.arange(0.0, 1.1, 0.1)  # the devkit ports' 11 recall levels (np.arange, as py-faster-rcnn's)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``a`` (N×4) against ``b`` (M×4), continuous coordinates (no +1)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (area_a[:, None] + area_b[None, :] - inter)
    return np.where(inter > 0, iou, 0.0)


def _xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def voc_matches(gt: dict, results: list[dict], category_id: int, image_ids: Sequence[int]) -> dict[str, Any]:
    """The VOC devkit's matching of one category (``VOCevaldet.m``): detections sorted by descending score over
    the whole set (stable), each matched to the ground-truth box of its image with the highest IoU; IoU ≥ 0.5 and
    that box not difficult and not yet taken → true positive (1), taken → false positive (0), difficult → ignored
    (-1); IoU < 0.5 → false positive. Difficult = ``iscrowd`` (the VOC reader writes difficult objects so).

    Boxes: the COCO ``bbox`` of ``gt`` and ``results``; the devkit's inclusive-pixel areas (``x2 − x1 + 1``) on its
    1-based corners equal continuous areas on the boxes the VOC reader writes (``[xmin − 1, ymin − 1, xmax,
    ymax]``), so IoU here is continuous. Returns ``{"scores", "images" (index into image_ids), "flags", "npos"
    (per image, non-difficult objects)}`` in the sorted order."""
    index = {int(i): n for n, i in enumerate(image_ids)}
    boxes: dict[int, list[list[float]]] = {}
    difficult: dict[int, list[bool]] = {}
    npos = np.zeros(len(image_ids), dtype=np.int64)
    for a in gt["annotations"]:
        if int(a["category_id"]) != category_id:
            continue
        i = int(a["image_id"])
        boxes.setdefault(i, []).append(_xyxy(a["bbox"]))
        difficult.setdefault(i, []).append(bool(a.get("iscrowd", 0)))
        npos[index[i]] += not a.get("iscrowd", 0)
    dets = [r for r in results if int(r["category_id"]) == category_id]
    scores = np.asarray([float(r["score"]) for r in dets], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    taken = {i: np.zeros(len(b), dtype=bool) for i, b in boxes.items()}
    gt_arrays = {i: np.asarray(b, dtype=np.float64) for i, b in boxes.items()}
    flags = np.zeros(len(dets), dtype=np.int64)
    for rank, d in enumerate(order):
        i = int(dets[d]["image_id"])
        if i not in gt_arrays:
            continue  # no ground truth of this class in the image: false positive
        iou = _iou_matrix(np.asarray([_xyxy(dets[d]["bbox"])]), gt_arrays[i])[0]
        j = int(np.argmax(iou))
        if iou[j] >= VOC_IOU:
            if difficult[i][j]:
                flags[rank] = -1
            elif not taken[i][j]:
                flags[rank], taken[i][j] = 1, True
    return {"scores": scores[order].tolist(), "images": [index[int(dets[d]["image_id"])] for d in order],
            "flags": flags.tolist(), "npos": npos.tolist()}


def voc_ap_from_flags(flags: np.ndarray, npos: float | np.ndarray, weights: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """All-point (VOC2010+) and 11-point (VOC2007) AP from sorted detection flags (1 TP, 0 FP, -1 ignored).

    ``weights`` (B, D): how often each detection counts in each of B resamples (None: once); ``npos`` scalar or
    (B,). Returns two (B,) arrays (NaN where npos is 0). Precision and recall are those of the devkit (``rec =
    tp / npos``, ``prec = tp / (tp + fp)``); only the true positives' positions are needed: recall rises only
    there and the envelope's maxima sit on them (an ignored detection changes neither count), which also gives the
    MATLAB devkit's answer where ignored detections lead the list (its ``max`` skips NaN precision)."""
    flags = np.asarray(flags, dtype=np.int64)
    w = np.ones((1, len(flags))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    b = w.shape[0]
    npos = np.broadcast_to(np.asarray(npos, dtype=np.float64), (b,))
    allpt, pt11 = np.zeros(b), np.zeros(b)
    hit = flags == 1
    if hit.any():
        pos = np.flatnonzero(hit)
        tps = np.cumsum(w[:, pos], axis=1)
        fps = np.cumsum(w[:, : pos[-1] + 1] * (flags[: pos[-1] + 1] == 0), axis=1)[:, pos]
        with np.errstate(invalid="ignore", divide="ignore"):
            rec = tps / npos[:, None]
            prec = np.where(tps + fps > 0, tps / (tps + fps), 0.0)  # no detection counted yet (weights 0): 0
        env = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
        drec = np.diff(np.concatenate([np.zeros((b, 1)), rec], axis=1), axis=1)
        allpt = (drec * env).sum(axis=1)
        for t in VOC07_RECALLS:
            reach = rec >= t
            # the envelope is non-increasing: the best precision at recall >= t is at the first position reaching t
            first = np.argmax(reach, axis=1)
            pt11 += np.where(reach.any(axis=1), np.take_along_axis(env, first[:, None], axis=1)[:, 0], 0.0) / 11
    nan = npos <= 0
    return np.where(nan, np.nan, allpt), np.where(nan, np.nan, pt11)


def voc_map(gt: dict, results: list[dict], image_stats: bool = False) -> dict[str, Any]:
    """The Pascal VOC devkit's AP@.5 per category (:func:`voc_matches`): ``voc_map50_allpt`` (all-point
    interpolation, VOC2010+) and ``voc07_map50_11pt`` (11-point, VOC2007), means over the categories with
    non-difficult objects, and per class ``per_class_voc`` / ``per_class_voc07`` (NaN without objects).
    ``image_stats`` adds the per-image statistics the bootstrap resamples (kind ``voc``)."""
    categories = sorted(gt.get("categories", []), key=lambda c: int(c["id"]))
    image_ids = [int(im["id"]) for im in gt.get("images", [])]
    per_all, per_11, stats = {}, {}, []
    for c in categories:
        m = voc_matches(gt, results, int(c["id"]), image_ids)
        npos = sum(m["npos"])
        a, p = voc_ap_from_flags(np.asarray(m["flags"]), npos)
        name = str(c.get("name", c["id"]))
        per_all[name], per_11[name] = float(a[0]), float(p[0])
        stats.append(m)

    def mean(values: dict[str, float]) -> float:
        v = [x for x in values.values() if not math.isnan(x)]
        return float(np.mean(v)) if v else math.nan

    out: dict[str, Any] = {"voc_map50_allpt": mean(per_all), "voc07_map50_11pt": mean(per_11),
                           "per_class_voc": per_all, "per_class_voc07": per_11}
    if image_stats:
        out["image_stats"] = {"categories": stats, "images": len(image_ids)}
    return out


# ------------------------------------------------------------------------------------------ semantic segmentation
def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``K×K`` int64 counts, rows = target class, columns = predicted class; ignored target pixels skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target ids outside [0, {num_classes}) and not {ignore_index}")
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted ids outside [0, {num_classes})")
    flat = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).cpu()


def iou_from_confusion(matrix: torch.Tensor) -> torch.Tensor:
    """Per-class IoU = TP / (TP + FP + FN) as float64; NaN for classes absent from prediction and target."""
    m = matrix.double()
    tp = m.diagonal()
    union = m.sum(0) + m.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def segmentation_image_stats(confusion: Any) -> list[list[int]]:
    """One image's ``[tp_1..tp_K, fp_1..fp_K, fn_1..fn_K]`` from its ``K×K`` confusion (rows = target)."""
    c = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(c)
    return [tp.tolist(), (c.sum(axis=0) - tp).tolist(), (c.sum(axis=1) - tp).tolist()]


class ConfusionMatrix:
    """Accumulates a ``K×K`` int64 matrix (rows = target class, columns = prediction) over many updates."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> ConfusionMatrix:
        """Add ``B×H×W`` (or ``H×W``) integer predictions against targets of the same shape."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        self.matrix += confusion_counts(pred, target, self.num_classes, self.ignore_index)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. gathered from other processes)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class counts into {self.num_classes} classes")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def reset(self) -> None:
        self.matrix.zero_()

    def iou(self) -> torch.Tensor:
        """Per-class IoU (float64, length K); NaN where a class is in neither prediction nor target."""
        return iou_from_confusion(self.matrix)

    def miou(self) -> float:
        """Mean IoU over classes with a defined IoU (NaN when there is none)."""
        iou = self.iou()
        return float(iou.nanmean()) if not torch.isnan(iou).all() else math.nan

    def pixel_accuracy(self) -> float:
        """Correct / counted (non-ignored) pixels; NaN before any pixel was counted."""
        total = int(self.matrix.sum())
        return int(self.matrix.diagonal().sum()) / total if total else math.nan

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """``{"miou", "pixel_acc", "iou_per_class": {name: IoU}}`` as plain floats (NaN kept)."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        per_class = {name: float(v) for name, v in zip(names, self.iou().tolist(), strict=True)}
        return {"miou": self.miou(), "pixel_acc": self.pixel_accuracy(), "iou_per_class": per_class}


class SegmentationEvaluator:
    """The evaluator interface over :class:`ConfusionMatrix`: predictions and targets are ``H×W`` integer class
    maps (tensors or arrays; 255 in a target = ignore); ``compute`` gives ``{"miou", "pixel_acc",
    "iou_per_class"}`` from the matrix summed over all images."""

    def __init__(self, names: Sequence[str], ignore_index: int = IGNORE_INDEX) -> None:
        self.names = list(names)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.matrix = ConfusionMatrix(len(self.names), self.ignore_index)
        self._stats: list[list[list[int]]] = []
        self._seen: set[int] = set()

    def update(self, preds: Sequence[Any], targets: Sequence[Any], image_ids: Sequence[int]) -> None:
        """Add one batch of per-image class maps (each image counted once: ids must be new)."""
        if not len(preds) == len(targets) == len(image_ids):
            raise ValueError(f"batch sizes differ: {len(preds)} preds, {len(targets)} targets, {len(image_ids)} ids")
        for pred, target, image_id in zip(preds, targets, image_ids, strict=True):
            if int(image_id) in self._seen:
                raise ValueError(f"image id {image_id} was already added")
            self._seen.add(int(image_id))
            image = ConfusionMatrix(len(self.names), self.ignore_index).update(
                torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(target)))
            self.matrix.merge(image)
            self._stats.append(segmentation_image_stats(image.matrix.numpy()))

    def compute(self, image_stats: bool = False) -> dict[str, Any]:
        out = self.matrix.as_dict(self.names)
        if image_stats:
            out["image_stats"] = [{"kind": "confusion", "prefix": "", "stats": list(self._stats)}]
        return out
