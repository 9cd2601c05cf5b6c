"""COCO-protocol detection metrics: perfect, empty and hand-checkable cases, and the incremental evaluator."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.detection import DetectionEvaluator, category_ids_from_gt, coco_map, predictions_to_coco


def _gt(boxes_per_image: list[list[tuple[float, float, float, float, int]]], names=("a", "b")) -> dict:
    """COCO GT dict from per-image lists of (x1, y1, x2, y2, category_id)."""
    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": i, "width": 100, "height": 80, "file_name": f"{i}.png"})
        for x1, y1, x2, y2, c in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}


SCENE = [
    [(10, 10, 40, 30, 1), (50, 20, 90, 70, 2)],
    [(5, 5, 25, 25, 1)],
    [(30, 30, 60, 75, 2), (0, 0, 20, 15, 2)],
]


def _perfect_rows(scene) -> list[dict]:
    return [{"image_id": i, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 1.0}
            for i, boxes in enumerate(scene, start=1) for x1, y1, x2, y2, c in boxes]


def test_perfect_predictions_score_one() -> None:
    out = coco_map(_gt(SCENE), _perfect_rows(SCENE))
    assert out["map"] == pytest.approx(1.0)
    assert out["map50"] == pytest.approx(1.0)
    assert out["per_class"] == pytest.approx({"a": 1.0, "b": 1.0})


def test_no_predictions_score_zero(capsys: pytest.CaptureFixture[str]) -> None:
    out = coco_map(_gt(SCENE), [])
    assert out["map"] == 0.0 and out["map50"] == 0.0
    assert out["per_class"] == {"a": 0.0, "b": 0.0}
    assert capsys.readouterr().out == ""


def test_category_without_gt_is_nan_not_zero() -> None:
    scene = [[(10, 10, 40, 30, 1)]]
    out = coco_map(_gt(scene), _perfect_rows(scene))
    assert out["map"] == pytest.approx(1.0)
    assert out["per_class"]["a"] == pytest.approx(1.0) and math.isnan(out["per_class"]["b"])


def test_one_of_two_objects_found_gives_51_of_101(capsys: pytest.CaptureFixture[str]) -> None:
    """Two objects, one found (score 0.9) plus a lower-scored miss: precision 1 up to recall 0.5, then nothing.

    COCO samples precision at 101 recall points 0, 0.01, …, 1: the 51 points ≤ 0.5 have precision 1 → 51/101.
    """
    scene = [[(10, 10, 40, 30, 1)], [(50, 20, 90, 70, 1)]]
    rows = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5},  # no overlap: false positive
    ]
    out = coco_map(_gt(scene, names=("a",)), rows)
    assert out["map50"] == pytest.approx(51 / 101)
    assert out["map"] == pytest.approx(51 / 101)  # the found box is exact, so every IoU threshold agrees
    assert capsys.readouterr().out == ""


def test_half_overlap_counts_only_at_low_thresholds() -> None:
    """A box with IoU 0.62 is a hit for thresholds .5–.6 (3 of 10) and a miss above → mAP 0.3, mAP50 1."""
    scene = [[(0, 0, 50, 10, 1)]]
    rows = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 31, 10], "score": 1.0}]  # IoU 310/500
    out = coco_map(_gt(scene, names=("a",)), rows)
    assert out["map50"] == pytest.approx(1.0)
    assert out["map"] == pytest.approx(0.3)


def test_predictions_to_coco_converts_boxes_and_categories() -> None:
    preds = [{"boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0]]), "scores": torch.tensor([0.5]),
              "classes": torch.tensor([1])},
             {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0), "classes": np.zeros(0, np.int64)}]
    rows = predictions_to_coco(preds, [7, 8], category_ids=[3, 5])
    assert rows == [{"image_id": 7, "category_id": 5, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}]
    assert predictions_to_coco(preds, [7, 8])[0]["category_id"] == 1
    assert category_ids_from_gt(_gt(SCENE)) == [1, 2]
    with pytest.raises(ValueError, match="image ids"):
        predictions_to_coco(preds, [7])


def _targets(scene) -> list[dict]:
    out = []
    for boxes in scene:
        arr = np.array([b[:4] for b in boxes], np.float32).reshape(-1, 4)
        out.append({"boxes": arr, "classes": np.array([b[4] - 1 for b in boxes], np.int64)})
    return out


def test_evaluator_accumulates_batches_like_one_call() -> None:
    targets = _targets(SCENE)
    preds = [{"boxes": t["boxes"] + 2.0, "scores": np.linspace(0.9, 0.5, len(t["classes"])), "classes": t["classes"]}
             for t in targets]
    preds[2]["classes"] = np.array([1, 0])  # one wrong class
    ev = DetectionEvaluator(["a", "b"])
    ev.update(preds[:2], targets[:2], [1, 2])
    ev.update(preds[2:], targets[2:], [3])
    got = ev.compute()
    want = coco_map(_gt(SCENE), predictions_to_coco(preds, [1, 2, 3], category_ids=[1, 2]))
    assert got["map"] == pytest.approx(want["map"]) and got["map50"] == pytest.approx(want["map50"])
    assert got["per_class"] == pytest.approx(want["per_class"])
    assert 0.0 < got["map50"] < 1.0
    with pytest.raises(ValueError, match="already added"):
        ev.update(preds[:1], targets[:1], [1])


def test_evaluator_perfect_and_empty() -> None:
    targets = _targets(SCENE)
    perfect = DetectionEvaluator(["a", "b"])
    perfect.update([{**t, "scores": np.ones(len(t["classes"]))} for t in targets], targets, [0, 1, 2])
    assert perfect.compute()["map"] == pytest.approx(1.0)
    empty = DetectionEvaluator(["a", "b"])
    none = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, np.int64)}
    empty.update([none] * 3, targets, [0, 1, 2])
    assert empty.compute()["map"] == 0.0


def test_ground_truth_of_real_dataset_as_predictions_scores_one(shared_data: Path) -> None:
    """coco8 through the project's dataset reader and its COCO GT: GT boxes as predictions → mAP 1."""
    datasets = pytest.importorskip("downstream.datasets")
    ds = datasets.YoloDetectionDataset(shared_data / "coco8" / "data.yaml", split="val")
    gt = datasets.to_coco_dict(ds)
    preds = []
    for i in range(len(ds)):
        t = ds.target(i)
        preds.append({**t, "scores": np.ones(len(t["classes"]), np.float32)})
    out = coco_map(gt, predictions_to_coco(preds, ds.image_ids, ds.category_ids))
    assert out["map"] == pytest.approx(1.0) and out["map50"] == pytest.approx(1.0)
    assert category_ids_from_gt(gt) == ds.category_ids
