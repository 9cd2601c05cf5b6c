"""Task metrics: COCO-protocol detection (perfect, empty and hand-checkable cases, the incremental evaluator) and the
confusion matrix (hand-computed IoU / mIoU / pixel accuracy, ignore label, accumulation, absent classes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from downstream.metrics import (
    ConfusionMatrix,
    DetectionEvaluator,
    SegmentationEvaluator,
    category_ids_from_gt,
    coco_map,
    predictions_to_coco,
)


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


# ------------------------------------------------------------------------------------------- confusion matrix

# 2×3 case, K = 3. The bottom-right target pixel is void (255) and must not count.
TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 0, 2]])
# Counted (target, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,0)  -> rows = target, cols = pred
EXPECTED_MATRIX = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
# class 0: TP 1, FP 1 (the class-2 pixel predicted 0), FN 1 (the class-0 pixel predicted 1) -> 1/3
# class 1: TP 2, FP 1, FN 0 -> 2/3
# class 2: TP 0, FP 0 (its only prediction is on the void pixel), FN 1 -> 0
EXPECTED_IOU = [1 / 3, 2 / 3, 0.0]
EXPECTED_MIOU = (1 / 3 + 2 / 3 + 0.0) / 3
EXPECTED_ACC = 3 / 5


def test_hand_computed_case() -> None:
    cm = ConfusionMatrix(3).update(PRED, TARGET)
    assert torch.equal(cm.matrix, EXPECTED_MATRIX)
    assert cm.matrix.dtype == torch.int64
    assert cm.iou().tolist() == pytest.approx(EXPECTED_IOU)
    assert cm.miou() == pytest.approx(EXPECTED_MIOU)
    assert cm.pixel_accuracy() == pytest.approx(EXPECTED_ACC)


def test_ignore_label_excluded_whatever_is_predicted_there() -> None:
    other = PRED.clone()
    other[1, 2] = 0  # change only the prediction on the void pixel
    assert torch.equal(ConfusionMatrix(3).update(other, TARGET).matrix, EXPECTED_MATRIX)


def test_custom_ignore_index() -> None:
    target = torch.tensor([[0, 1, 7]])
    pred = torch.tensor([[0, 0, 1]])
    cm = ConfusionMatrix(2, ignore_index=7).update(pred, target)
    assert torch.equal(cm.matrix, torch.tensor([[1, 0], [1, 0]]))
    assert cm.pixel_accuracy() == pytest.approx(0.5)


def test_absent_class_is_nan_and_left_out_of_mean() -> None:
    cm = ConfusionMatrix(4).update(PRED, TARGET)  # class 3 appears nowhere
    iou = cm.iou()
    assert math.isnan(iou[3])
    assert iou[:3].tolist() == pytest.approx(EXPECTED_IOU)
    assert cm.miou() == pytest.approx(EXPECTED_MIOU)
    d = cm.as_dict(["sky", "road", "car", "boat"])
    assert d["miou"] == pytest.approx(EXPECTED_MIOU)
    assert d["pixel_acc"] == pytest.approx(EXPECTED_ACC)
    assert d["iou_per_class"]["road"] == pytest.approx(2 / 3)
    assert math.isnan(d["iou_per_class"]["boat"])


def test_dataset_sum_not_mean_of_images() -> None:
    # image 1: four class-0 pixels, all right; image 2: two class-1 pixels, one predicted as 0.
    cm = ConfusionMatrix(2)
    cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]))
    # summed: class 0 TP 4, FP 1 -> 4/5; class 1 TP 1, FN 1 -> 1/2; mIoU 0.65
    # (the mean of per-image mIoUs would be (1 + 0.25) / 2 = 0.625)
    assert cm.iou().tolist() == pytest.approx([0.8, 0.5])
    assert cm.miou() == pytest.approx(0.65)
    assert cm.pixel_accuracy() == pytest.approx(5 / 6)


def test_two_updates_equal_one_over_concatenation() -> None:
    g = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 5, (4, 9, 11), generator=g)
    target = torch.randint(0, 5, (4, 9, 11), generator=g)
    target[torch.rand(4, 9, 11, generator=g) < 0.1] = 255
    split = ConfusionMatrix(5).update(pred[:1], target[:1]).update(pred[1:], target[1:])
    whole = ConfusionMatrix(5).update(pred, target)
    assert torch.equal(split.matrix, whole.matrix)
    assert int(whole.matrix.sum()) == int((target != 255).sum())
    per_image = ConfusionMatrix(5)
    for p, t in zip(pred, target, strict=True):  # H×W updates
        per_image.update(p, t)
    assert torch.equal(per_image.matrix, whole.matrix)


def test_merge_and_reset() -> None:
    a = ConfusionMatrix(3).update(PRED[:1], TARGET[:1])
    b = ConfusionMatrix(3).update(PRED[1:], TARGET[1:])
    assert torch.equal(a.merge(b).matrix, EXPECTED_MATRIX)
    with pytest.raises(ValueError, match="merge"):
        a.merge(ConfusionMatrix(4))
    a.reset()
    assert int(a.matrix.sum()) == 0
    assert math.isnan(a.miou()) and math.isnan(a.pixel_accuracy())


def test_bad_inputs() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(PRED, TARGET[:1])
    with pytest.raises(ValueError, match="target ids"):
        cm.update(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="predicted ids"):
        cm.update(torch.tensor([5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="class names"):
        cm.as_dict(["a"])


def test_segmentation_evaluator_sums_one_confusion_matrix() -> None:
    """The evaluator interface gives the ConfusionMatrix numbers over all images, and refuses an image twice."""
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, (5, 6)) for _ in range(4)]
    preds = [np.where(rng.random(m.shape) < 0.6, m, 2) for m in masks]
    ev = SegmentationEvaluator(["x", "y", "z"])
    ev.update(preds[:2], masks[:2], [0, 1])
    ev.update(preds[2:], masks[2:], [2, 3])
    ref = ConfusionMatrix(3)
    for p, m in zip(preds, masks, strict=True):
        ref.update(torch.from_numpy(p), torch.from_numpy(m))
    assert ev.compute() == ref.as_dict(["x", "y", "z"])
    with pytest.raises(ValueError, match="already added"):
        ev.update(preds[:1], masks[:1], [3])
    ev.reset()
    ev.update(preds[:1], masks[:1], [3])
    assert ev.compute()["miou"] == pytest.approx(ConfusionMatrix(3).update(torch.from_numpy(preds[0]),
                                                                           torch.from_numpy(masks[0])).miou())
