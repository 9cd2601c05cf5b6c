"""Paired bootstrap over images: confidence intervals for task metrics and for differences between conditions.

Dataset metrics are not means of per-image numbers (COCO mAP pools detections, mIoU pools pixels), so each
resample recomputes the metric from per-image *statistics* weighted by how often the resample drew the image:

- detection: per category, every detection's score and its COCO match flags at the 10 IoU thresholds (taken from
  pycocotools' own per-image evaluation), and each image's count of non-ignored ground-truth objects; the weighted
  accumulation reproduces ``COCOeval.accumulate`` exactly when every weight is 1 (tested);
- Pascal VOC AP (``format: voc``): per category, every detection's score, image and devkit match flag (true
  positive, false positive, ignored on a difficult object) in score order, and each image's count of non-difficult
  objects; weights of 1 reproduce ``downstream.metrics.voc_map`` exactly (tested);
- segmentation: per image and class the true-positive, false-positive and false-negative pixel counts.

"Paired": two conditions of one dataset (clean vs rainy, derained vs rainy, method A vs B) are resampled with the
same draws, so image difficulty cancels in their difference. Intervals are percentile intervals (2.5 %, 97.5 %).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from downstream.metrics import unpack_flags, voc_ap_from_flags

R_THRESHOLDS = np.linspace(0.0, 1.00, 101)  # COCO's recall thresholds
LEVEL = 0.95


# -- detection ----------------------------------------------------------------------------------------------------
def detection_metrics(stats: dict[str, Any], weights: np.ndarray) -> dict[str, np.ndarray]:
    """``{"map": (B,), "map50": (B,)}`` for image weights ``(B, N)`` (counts of each image in each resample).

    The work is laid out detections × resamples (``D×B``), so the cumulative sums and the envelope run along the
    first axis over contiguous rows of B values (vectorised), not along each resample's row."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    b = weights.shape[0]
    t = len(stats["iou_thresholds"])
    integral = weights.sum(axis=1).max() < 2**24  # integer counts: exact in float32, and half the memory traffic
    images_by_resample = np.ascontiguousarray(weights.T, dtype=np.float32 if integral else np.float64)  # (N, B)
    ap_sum, ap50_sum, count = np.zeros(b), np.zeros(b), np.zeros(b)
    for cat in stats["categories"]:
        npos = weights @ np.asarray(cat["npos"], dtype=np.float64)  # (B,)
        valid = npos > 0
        if not valid.any():
            continue
        ap = np.zeros((b, t))
        scores = np.asarray(cat["scores"], dtype=np.float64)
        if scores.size:
            order = np.argsort(-scores, kind="mergesort")
            tp = unpack_flags(cat["tp"], t)[order]  # (D, T)
            ig = unpack_flags(cat["ignore"], t)[order]
            w = images_by_resample[np.asarray(cat["images"], dtype=np.int64)[order]]  # (D, B)
            hits = np.flatnonzero((tp & ~ig).any(axis=1))  # detections that are a true positive at some threshold
            counted: dict[bytes, np.ndarray] = {}  # per ignore mask: the non-ignored weight up to each of ``hits``
            for j in range(t):
                hit = tp[:, j] & ~ig[:, j]
                if not hit.any():
                    continue  # no true positive at this threshold: AP 0 in every resample
                # Only the true positives' positions matter: recall rises only there, and a false positive lowers
                # precision below that of the true positive before it, so the envelope's maxima sit on true
                # positives too. AP therefore needs the cumulative counts at the true positives only (exactly).
                pos = np.flatnonzero(hit)
                tps = np.cumsum(w[pos], axis=0, dtype=w.dtype)
                mask = ~ig[:, j]
                if (k := mask.tobytes()) not in counted:  # the mask rarely changes between thresholds
                    kept = w[: hits[-1] + 1] if mask.all() else w[: hits[-1] + 1] * mask[: hits[-1] + 1, None]
                    # each block sums the rows after the previous hit up to this one; their running sum is the total
                    blocks = np.add.reduceat(kept, np.r_[0, hits[:-1] + 1], axis=0, dtype=w.dtype)
                    counted[k] = np.cumsum(blocks, axis=0, dtype=w.dtype)
                fps = counted[k][np.searchsorted(hits, pos)] - tps  # non-ignored so far minus the true positives
                ap[:, j] = _interpolated_ap(tps.astype(np.float64), fps.astype(np.float64), npos)
        ap_sum += np.where(valid, ap.mean(axis=1), 0.0)
        ap50_sum += np.where(valid, ap[:, 0], 0.0)
        count += valid
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"map": np.where(count > 0, ap_sum / count, np.nan), "map50": np.where(count > 0, ap50_sum / count,
                                                                                    np.nan)}


def _interpolated_ap(tps: np.ndarray, fps: np.ndarray, npos: np.ndarray) -> np.ndarray:
    """COCO's 101-point interpolated AP per resample: ``tps``/``fps`` (P, B) cumulative weighted counts at the
    true positives, ``npos`` (B,) -> (B,).

    pycocotools takes, per recall threshold r, the envelope at ``searchsorted(recall, r, side="left")``: the number
    of recall values below r (recall never falls along a column). That count is found the other way round, without
    comparing anything but the same float64 values: each recall value is placed among the thresholds
    (``searchsorted(R, recall, side="right")`` = the first threshold above it) and the placements are counted."""
    p, b = tps.shape
    ok = npos > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(ok[None, :], tps / npos[None, :], 0.0)
    precision = tps / (tps + fps + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]  # COCO's right-to-left max
    r = len(R_THRESHOLDS)
    first_above = np.searchsorted(R_THRESHOLDS, recall, side="right")  # (P, B) in [0, r]
    placed = np.bincount((first_above * b + np.arange(b)).ravel(), minlength=(r + 1) * b).reshape(r + 1, b)
    idx = np.cumsum(placed[:r], axis=0)  # (r, B): recall values below each threshold
    q = np.where(idx < p, np.take_along_axis(envelope, np.minimum(idx, p - 1), axis=0), 0.0)
    return np.where(ok, np.ascontiguousarray(q.T).mean(axis=1), 0.0)


def voc_metrics(stats: dict[str, Any], weights: np.ndarray) -> dict[str, np.ndarray]:
    """``{"voc_map50_allpt": (B,), "voc07_map50_11pt": (B,)}`` for image weights ``(B, N)``: each category's devkit
    AP (:func:`downstream.metrics.voc_ap_from_flags`) with every detection counted as often as its image was drawn,
    averaged over the categories with objects in the resample."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    allpt, pt11 = [], []
    for cat in stats["categories"]:
        npos = weights @ np.asarray(cat["npos"], dtype=np.float64)
        w = weights[:, np.asarray(cat["images"], dtype=np.int64)]
        a, p = voc_ap_from_flags(np.asarray(cat["flags"], dtype=np.int64), npos, w)
        allpt.append(a)
        pt11.append(p)
    if not allpt:
        nan = np.full(weights.shape[0], np.nan)
        return {"voc_map50_allpt": nan, "voc07_map50_11pt": nan.copy()}
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any object: NaN
        return {"voc_map50_allpt": np.nanmean(np.stack(allpt), axis=0),
                "voc07_map50_11pt": np.nanmean(np.stack(pt11), axis=0)}


# -- segmentation -------------------------------------------------------------------------------------------------
def segmentation_metrics(stats: Sequence[Sequence[Sequence[int]]], weights: np.ndarray) -> dict[str, np.ndarray]:
    """``{"miou": (B,), "pixel_acc": (B,)}`` for per-image ``[tp, fp, fn]`` stats and weights ``(B, N)``."""
    s = np.asarray(stats, dtype=np.float64)  # (N, 3, K)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    tp, fp, fn = (np.tensordot(weights, s[:, i], axes=1) for i in range(3))  # (B, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        miou = np.where(np.isnan(iou).all(axis=1), np.nan, np.nanmean(np.where(np.isnan(iou), np.nan, iou), axis=1))
        acc = tp.sum(axis=1) / (tp + fn).sum(axis=1)
    return {"miou": miou, "pixel_acc": acc}


# -- resampling ---------------------------------------------------------------------------------------------------
def resample_weights(n: int, resamples: int, seed: int | Sequence[int]) -> np.ndarray:
    """``(resamples, n)`` counts: how often each of ``n`` images appears in each bootstrap resample (seeded)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n), dtype=np.float64)
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)
    return weights


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the finite bootstrap samples (NaN, NaN when there are none)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if not s.size:
        return math.nan, math.nan
    lo, hi = np.quantile(s, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def excludes_zero(ci: tuple[float, float]) -> bool:
    """True when the interval lies entirely on one side of 0 (the difference is not within noise)."""
    lo, hi = ci
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


MetricFn = Callable[[Any, np.ndarray], dict[str, np.ndarray]]
STAT_KINDS: dict[str, MetricFn] = {"coco": detection_metrics, "voc": voc_metrics, "confusion": segmentation_metrics}


def resampled_metrics(image_stats: Sequence[dict[str, Any]], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric an evaluator's ``image_stats`` entries (``downstream.metrics``) recompute, for image weights
    ``(B, N)``: ``{prefix + metric: (B,)}``."""
    out: dict[str, np.ndarray] = {}
    for entry in image_stats:
        if entry["kind"] not in STAT_KINDS:
            raise ValueError(f"unknown image statistics kind {entry['kind']!r}; known: {sorted(STAT_KINDS)}")
        out |= {entry["prefix"] + k: v for k, v in STAT_KINDS[entry["kind"]](entry["stats"], weights).items()}
    return out
