"""The detection bootstrap (``eval.bootstrap.detection_metrics``) vs the naive way: one pycocotools-style
accumulation per resample (sort, cumulative true/false positives, envelope, ``searchsorted`` at the 101 recall
thresholds), on the same per-image statistics of a demo-like detection cell (50 images, 6 classes, a low score
threshold, so thousands of scored detections per class). Prints both times, the ratio, and the largest difference.

    python bench/bootstrap_speed.py [--resamples 1000] [--images 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from downstream.metrics import DetectionEvaluator, unpack_flags
from eval.bootstrap import R_THRESHOLDS, detection_metrics, resample_weights


def detection_stats(images: int, classes: int, seed: int = 0) -> dict:
    """pycocotools' per-image statistics of random boxes: jittered true boxes, misses and many low-score extras."""
    rng = np.random.default_rng(seed)
    targets, preds = [], []
    for _ in range(images):
        k = int(rng.integers(2, 8))
        xy = rng.uniform(0, 120, (k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 40, (k, 2))], axis=1)
        cls = rng.integers(0, classes, k)
        targets.append({"boxes": boxes, "classes": cls})
        keep = rng.random(k) > 0.2
        found = boxes[keep] + rng.normal(0, 3, (int(keep.sum()), 4))
        extra = int(rng.integers(150, 250))  # conf 0.001: many weak boxes per image
        exy = rng.uniform(0, 140, (extra, 2))
        p_boxes = np.concatenate([found, np.concatenate([exy, exy + rng.uniform(6, 30, (extra, 2))], axis=1)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(found)), rng.uniform(0.001, 0.5, extra)])
        preds.append({"boxes": p_boxes, "scores": scores,
                      "classes": np.concatenate([cls[keep], rng.integers(0, classes, extra)])})
    ev = DetectionEvaluator([f"c{i}" for i in range(classes)])
    ev.update(preds, targets, list(range(images)))
    return ev.compute(image_stats=True)["image_stats"][0]["stats"]


def naive(stats: dict, weights: np.ndarray) -> np.ndarray:
    """mAP per resample, one resample at a time, the way ``COCOeval.accumulate`` does it for one dataset."""
    t = len(stats["iou_thresholds"])
    out = np.zeros(len(weights))
    for b, w in enumerate(weights):
        aps = []
        for cat in stats["categories"]:
            npos = float(np.dot(w, cat["npos"]))
            if npos == 0:
                continue
            scores = np.asarray(cat["scores"], dtype=np.float64)
            order = np.argsort(-scores, kind="mergesort")
            tp = unpack_flags(cat["tp"], t)[order]
            ig = unpack_flags(cat["ignore"], t)[order]
            dw = w[np.asarray(cat["images"], dtype=np.int64)[order]]
            ap = np.zeros(t)
            for j in range(t):
                tps = np.cumsum(dw * (tp[:, j] & ~ig[:, j]))
                fps = np.cumsum(dw * (~tp[:, j] & ~ig[:, j]))
                keep = dw * ~ig[:, j] > 0  # an image drawn 0 times contributes no detection
                tps, fps = tps[keep], fps[keep]
                if not len(tps):
                    continue
                recall = tps / npos
                precision = (tps / (tps + fps + np.spacing(1))).tolist()
                for i in range(len(precision) - 1, 0, -1):
                    precision[i - 1] = max(precision[i - 1], precision[i])
                idx = np.searchsorted(recall, R_THRESHOLDS, side="left")
                ap[j] = np.mean([precision[i] if i < len(precision) else 0.0 for i in idx])
            aps.append(ap.mean())
        out[b] = np.mean(aps) if aps else np.nan
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--classes", type=int, default=6)
    args = parser.parse_args()
    stats = detection_stats(args.images, args.classes)
    detections = sum(len(c["scores"]) for c in stats["categories"])
    weights = resample_weights(args.images, args.resamples, seed=0)
    t = time.perf_counter()
    ref = naive(stats, weights)
    t_naive = time.perf_counter() - t
    detection_metrics(stats, weights[:2])  # warm-up
    t = time.perf_counter()
    ours = detection_metrics(stats, weights)["map"]
    t_ours = time.perf_counter() - t
    print(f"{args.images} images, {detections} detections, {args.resamples} resamples")
    print(f"naive (per resample): {t_naive:.3f} s")
    print(f"detection_metrics:    {t_ours:.3f} s")
    print(f"ratio: {t_naive / t_ours:.1f}x; largest |difference| in mAP: {np.max(np.abs(ref - ours)):.2e}")


if __name__ == "__main__":
    main()
