"""Segmentation metrics: one confusion matrix summed over a whole dataset, then mIoU / per-class IoU / accuracy.

The protocol (DESIGN.md §5): mIoU is the mean over classes of IoU computed from the confusion matrix summed
over ALL images (not a mean of per-image mIoUs); target pixels equal to ``ignore_index`` (255) are skipped;
a class absent from both predictions and targets has IoU NaN and is left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from downstream.datasets import IGNORE_INDEX
from downstream.segmentation import confusion_counts, iou_from_confusion


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
