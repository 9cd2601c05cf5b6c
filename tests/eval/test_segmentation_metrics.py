"""ConfusionMatrix: hand-computed IoU / mIoU / pixel accuracy, ignore label, accumulation, absent classes."""

from __future__ import annotations

import math

import pytest
import torch

from eval.segmentation import ConfusionMatrix

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
