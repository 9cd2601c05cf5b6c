"""Paired bootstrap: the weighted re-accumulation equals pycocotools and the confusion-matrix mIoU on explicitly
resampled datasets, intervals around 0 for identical methods, and a real shift detected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from downstream.metrics import ConfusionMatrix, DetectionEvaluator, SegmentationEvaluator, segmentation_image_stats
from eval.bootstrap import (
    detection_metrics,
    excludes_zero,
    interval,
    resample_weights,
    resampled_metrics,
    segmentation_metrics,
)

NAMES = ["a", "b", "c"]


def random_detection_set(rng: np.random.Generator, n: int = 12) -> tuple[list[dict], list[dict]]:
    """Ground truth (some images empty) and predictions: jittered true boxes, misses, false positives."""
    targets, preds = [], []
    for i in range(n):
        k = int(rng.integers(0, 4)) if i % 5 else 0
        xy = rng.uniform(0, 80, (k, 2))
        wh = rng.uniform(8, 30, (k, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        classes = rng.integers(0, 3, k)
        targets.append({"boxes": boxes, "classes": classes})
        keep = rng.random(k) > 0.25
        p_boxes = boxes[keep] + rng.normal(0, 2.5, (int(keep.sum()), 4))
        p_classes = np.where(rng.random(int(keep.sum())) < 0.85, classes[keep], rng.integers(0, 3, int(keep.sum())))
        fp = int(rng.integers(0, 3))
        fxy = rng.uniform(0, 80, (fp, 2))
        p_boxes = np.concatenate([p_boxes, np.concatenate([fxy, fxy + 15], axis=1)])
        p_classes = np.concatenate([p_classes, rng.integers(0, 3, fp)])
        preds.append({"boxes": p_boxes, "scores": rng.random(len(p_boxes)), "classes": p_classes})
    return targets, preds


def coco(targets: list[dict], preds: list[dict], image_stats: bool = False) -> dict:
    ev = DetectionEvaluator(NAMES)
    ev.update(preds, targets, list(range(len(targets))))
    return ev.compute(image_stats=image_stats)


def test_weighted_detection_equals_pycocotools_on_the_resampled_dataset() -> None:
    rng = np.random.default_rng(0)
    targets, preds = random_detection_set(rng)
    full = coco(targets, preds, image_stats=True)
    [entry] = full["image_stats"]
    assert (entry["kind"], entry["prefix"]) == ("coco", "")
    ones = resampled_metrics(full["image_stats"], np.ones((1, len(targets))))
    assert ones["map"][0] == pytest.approx(full["map"], abs=1e-12)
    assert ones["map50"][0] == pytest.approx(full["map50"], abs=1e-12)
    weights = resample_weights(len(targets), 4, seed=1)
    got = detection_metrics(entry["stats"], weights)
    for b, w in enumerate(weights):  # the same resample built explicitly: images repeated w[i] times
        picks = [i for i in range(len(targets)) for _ in range(int(w[i]))]
        ref = coco([targets[i] for i in picks], [preds[i] for i in picks])
        assert got["map"][b] == pytest.approx(ref["map"], abs=1e-9)
        assert got["map50"][b] == pytest.approx(ref["map50"], abs=1e-9)


def test_no_detections_gives_zero() -> None:
    targets, _ = random_detection_set(np.random.default_rng(1))
    empty = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int)} for _ in targets]
    out = coco(targets, empty, image_stats=True)
    assert detection_metrics(out["image_stats"][0]["stats"], np.ones((2, len(targets))))["map"].tolist() == [0.0, 0.0]


def test_weighted_segmentation_equals_the_confusion_matrix_of_the_resampled_dataset() -> None:
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 4, (6, 7)) for _ in range(9)]
    preds = [np.where(rng.random(m.shape) < 0.7, m, rng.integers(0, 4, m.shape)) for m in masks]
    for m in masks[:3]:
        m[0, :3] = 255  # ignored pixels
    stats = [segmentation_image_stats(ConfusionMatrix(4).update(torch.from_numpy(p), torch.from_numpy(m)).matrix)
             for p, m in zip(preds, masks, strict=True)]
    weights = resample_weights(len(masks), 5, seed=3)
    got = segmentation_metrics(stats, weights)
    evaluator = SegmentationEvaluator(["a", "b", "c", "d"])  # the bench's route: the evaluator's tagged statistics
    evaluator.update(preds, masks, list(range(len(masks))))
    via_evaluator = resampled_metrics(evaluator.compute(image_stats=True)["image_stats"], weights)
    assert {k: v.tolist() for k, v in via_evaluator.items()} == {k: v.tolist() for k, v in got.items()}
    for b, w in enumerate(weights):
        ref = ConfusionMatrix(4)
        for i in range(len(masks)):
            for _ in range(int(w[i])):
                ref.update(torch.from_numpy(preds[i]), torch.from_numpy(masks[i]))
        assert got["miou"][b] == pytest.approx(ref.miou(), abs=1e-12)
        assert got["pixel_acc"][b] == pytest.approx(ref.pixel_accuracy(), abs=1e-12)


def test_paired_differences_identical_and_shifted() -> None:
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, (8, 8)) for _ in range(30)]
    good = [np.where(rng.random(m.shape) < 0.9, m, (m + 1) % 3) for m in masks]
    bad = [np.where(rng.random(m.shape) < 0.6, m, (m + 1) % 3) for m in masks]

    def stats(preds: list[np.ndarray]) -> list:
        return [segmentation_image_stats(ConfusionMatrix(3).update(torch.from_numpy(p), torch.from_numpy(m)).matrix)
                for p, m in zip(preds, masks, strict=True)]

    weights = resample_weights(len(masks), 500, seed=0)
    a, b = segmentation_metrics(stats(good), weights), segmentation_metrics(stats(bad), weights)
    same = interval(a["miou"] - segmentation_metrics(stats(good), weights)["miou"])
    assert same == (0.0, 0.0) and not excludes_zero(same)
    shift = interval(a["miou"] - b["miou"])
    assert excludes_zero(shift) and shift[0] > 0.1
    assert np.array_equal(resample_weights(30, 500, seed=0), weights)  # seeded
    assert weights.sum(axis=1).tolist() == [30.0] * 500
