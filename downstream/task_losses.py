"""Differentiable task losses for joint deraining fine-tuning.

``DetectionLoss`` wraps ultralytics' own detection training criterion (``v8DetectionLoss``, or ``E2ELoss``
for end-to-end heads) so a detector's training loss on derained images can be back-propagated into the
derainer; the detector is frozen by default (eval-mode BatchNorm, ``requires_grad=False``).
``segmentation_ce`` is the matching pixel-wise cross-entropy for segmentation, and ``feature_consistency`` the
distance between a task model's internal features of derained and clean images (each task's ``features``; YOLO: the
P3–P5 maps entering the Detect head, :func:`detector_features`; smp: the encoder's feature pyramid).

Scaling: ultralytics returns the gain-weighted ``(box, cls, dfl)`` vector multiplied by the batch size, and its
trainer back-propagates the sum of that. We return that sum divided by the batch size, i.e. the per-image mean
``box + cls + dfl``, so a joint weight ``λ`` does not depend on the batch size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from downstream.detection import PAD_VALUE, Detector


def pad_to_stride(images: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad ``images`` (B×3×H×W) at the bottom/right with 114/255 to a multiple of ``stride`` (differentiable)."""
    h, w = images.shape[-2:]
    ph, pw = -h % stride, -w % stride
    return F.pad(images, (0, pw, 0, ph), value=PAD_VALUE) if ph or pw else images


def _hyperparameters(model: torch.nn.Module, box: float, cls: float, dfl: float) -> Any:
    """ultralytics' default training config, the model's own saved args over it, and our gains on top."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils import IterableSimpleNamespace

    saved = getattr(model, "args", None)
    saved = vars(saved) if hasattr(saved, "__dict__") else dict(saved) if isinstance(saved, dict) else {}
    return IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **saved, "box": box, "cls": cls, "dfl": dfl})


def to_ultralytics_batch(
    targets: list[dict[str, torch.Tensor]], image_size: tuple[int, int], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Convert per-image targets to ultralytics' flat training batch (without ``"img"``).

    ``targets[i]`` holds ``"boxes"`` (N×4 xyxy, absolute pixels of an image of ``image_size`` = (H, W)) and
    ``"classes"`` (N int). Boxes are clipped to the image. Returns ``batch_idx`` (M float), ``cls`` (M×1 float)
    and ``bboxes`` (M×4 xywh normalised to [0, 1] by W and H), with M the total box count.
    """
    h, w = image_size
    idx, cls, boxes = [], [], []
    for i, t in enumerate(targets):
        if "boxes" not in t or "classes" not in t:
            raise ValueError(f"target {i} needs 'boxes' and 'classes', got keys {sorted(t)}")
        b = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device)
        c = torch.as_tensor(t["classes"], device=device)
        if b.numel() == 0:
            b = b.reshape(0, 4)
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"target {i}: boxes must be N×4 xyxy, got shape {tuple(b.shape)}")
        if c.reshape(-1).shape[0] != b.shape[0]:
            raise ValueError(f"target {i}: {b.shape[0]} boxes but {c.numel()} classes")
        b = torch.stack((b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)), 1)
        xywh = torch.stack(((b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                            (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h), 1)
        idx.append(torch.full((b.shape[0],), float(i), device=device))
        cls.append(c.reshape(-1, 1).float())
        boxes.append(xywh)
    if not targets:
        return {"batch_idx": torch.zeros(0, device=device), "cls": torch.zeros(0, 1, device=device),
                "bboxes": torch.zeros(0, 4, device=device)}
    return {"batch_idx": torch.cat(idx), "cls": torch.cat(cls), "bboxes": torch.cat(boxes)}


class DetectionLoss:
    """YOLO training loss of ``detector`` on images, differentiable with respect to the images.

    Builds ``model.args`` (ultralytics defaults with the ``box``/``cls``/``dfl`` gains; the model's gains are
    overwritten) and the criterion once, the same way ``DetectionModel.loss`` does. With ``freeze=True``
    (default) the model is put in eval mode with ``requires_grad=False``: BatchNorm statistics stay fixed,
    and the eval-mode head returns its raw outputs alongside the decoded ones, which the criterion uses.
    With ``freeze=False`` the model is left as the caller set it (``train()`` to update BN statistics).
    """

    def __init__(self, detector: Detector, box: float = 7.5, cls: float = 0.5, dfl: float = 1.5,
                 freeze: bool = True) -> None:
        self.detector = detector
        self.freeze = freeze
        model = detector.model
        model.args = _hyperparameters(model, box, cls, dfl)
        self.criterion = model.init_criterion()
        if freeze:
            model.eval()
            model.requires_grad_(False)

    def to_ultralytics_batch(self, targets: list[dict[str, torch.Tensor]],
                             image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """See the module-level ``to_ultralytics_batch``; tensors land on the detector's device."""
        return to_ultralytics_batch(targets, image_size, self.detector.device)

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """Pad ``images`` to the detector's stride (see :func:`pad_to_stride`); box coordinates are unchanged."""
        return pad_to_stride(images, self.detector.stride)

    def check(self, images: torch.Tensor, targets: list[dict[str, Any]]) -> None:
        """Raise ``ValueError`` unless ``images`` is B×3×H×W with B targets whose class ids the model predicts."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape B×3×H×W, got {tuple(images.shape)}")
        if len(targets) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(targets)} targets")
        for i, t in enumerate(targets):
            c = torch.as_tensor(t.get("classes", []))
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.detector.nc):
                raise ValueError(f"target {i}: class ids must lie in [0, {self.detector.nc}), got {c.tolist()}")

    def __call__(
        self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of ``images`` (B×3×H×W float in [0, 1], any H, W) against ``targets`` (B dicts, input pixels).

        Returns the per-image mean of ``box·L_box + cls·L_cls + dfl·L_dfl`` (ultralytics' trainer loss divided
        by B; a scalar with grad) and the detached gain-weighted parts ``{"box", "cls", "dfl"}`` summing to it.
        """
        self.check(images, targets)
        x = self.pad(images.to(self.detector.device, torch.float32))
        batch = self.to_ultralytics_batch(targets, tuple(x.shape[-2:]))
        batch["img"] = x
        preds = self.detector.model(x)
        loss, _ = self.criterion(preds, batch)  # gain-weighted (box, cls, dfl) × B
        parts = loss / images.shape[0]
        names = ("box", "cls", "dfl")
        return parts.sum(), {k: v.detach() for k, v in zip(names, parts, strict=True)}


def segmentation_ce(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean pixel cross-entropy of ``logits`` (B×K×H×W) against ``masks`` (B×H×W int64, ``ignore_index`` skipped)."""
    if logits.ndim != 4 or masks.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"expected logits B×K×H×W and masks B×H×W, got {tuple(logits.shape)}, {tuple(masks.shape)}")
    return F.cross_entropy(logits, masks.long(), ignore_index=ignore_index)


@contextlib.contextmanager
def tap(module: nn.Module, inputs: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect the tensors ``module`` receives (``inputs``) or returns during the forward passes inside the block."""
    found: list[torch.Tensor] = []

    def grab(value: Any) -> None:
        items = value if isinstance(value, (list, tuple)) else [value]
        found.extend(t for t in items if isinstance(t, torch.Tensor))

    if inputs:
        handle = module.register_forward_pre_hook(lambda _m, args: grab(args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _args, out: grab(out))
    try:
        yield found
    finally:
        handle.remove()


def detector_features(detector: Detector, images: torch.Tensor) -> list[torch.Tensor]:
    """The feature maps a YOLO model's head receives (P3–P5) for ``images`` (B×3×H×W, [0, 1]), differentiable
    w.r.t. the images."""
    with tap(detector.model.model[-1], inputs=True) as found:
        detector.model(pad_to_stride(images.to(detector.device, torch.float32), detector.stride))
    return found


def feature_consistency(features: Callable[[torch.Tensor], list[torch.Tensor]], derained: torch.Tensor,
                        clean: torch.Tensor) -> torch.Tensor:
    """Mean over feature levels of the MSE between ``features(derained)`` and ``features(clean)`` (the latter without
    grad); ``features`` is a task's :meth:`~downstream.tasks.Task.features` bound to its model."""
    with torch.no_grad():
        reference = features(clean)
    found = features(derained)
    if not found or len(found) != len(reference):
        raise RuntimeError(f"task model gave {len(found)} feature maps for derained, {len(reference)} for clean")
    return sum(F.mse_loss(f, r) for f, r in zip(found, reference, strict=True)) / len(found)
