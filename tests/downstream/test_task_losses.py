"""Task losses: our DetectionLoss equals ultralytics' own ``model.loss``; gradients reach the images only."""

from __future__ import annotations

import copy

import pytest
import torch

from downstream.detection import load_detector
from downstream.task_losses import DetectionLoss, segmentation_ce, to_ultralytics_batch


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return load_detector("yolo11n.yaml", nc=3)


def _batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 64, 64, generator=g)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]), "classes": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 62.0]]), "classes": torch.tensor([1])},
    ]
    return images, targets


def _ultralytics_batch(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch as ultralytics' detection trainer hands it to ``model.loss`` (after ``preprocess_batch``)."""
    return {
        "img": images,
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0], [1.0]]),
        "bboxes": torch.tensor([[17 / 64, 23 / 64, 26 / 64, 34 / 64],
                                [40 / 64, 30 / 64, 40 / 64, 40 / 64],
                                [30 / 64, 37 / 64, 40 / 64, 50 / 64]]),
    }


def _reference(detector, train: bool) -> torch.nn.Module:
    from ultralytics.cfg import get_cfg

    ref = copy.deepcopy(detector.model)
    ref.args = get_cfg()  # what DetectionTrainer attaches: defaults box=7.5, cls=0.5, dfl=1.5
    ref.criterion = None
    return ref.train() if train else ref.eval()


def test_batch_conversion() -> None:
    images, targets = _batch()
    ours = to_ultralytics_batch(targets, (64, 64))
    ref = _ultralytics_batch(images)
    for k in ("batch_idx", "cls", "bboxes"):
        torch.testing.assert_close(ours[k], ref[k])


@pytest.mark.parametrize("train", [False, True])
def test_equals_ultralytics_trainer_loss(detector, train: bool) -> None:
    images, targets = _batch()
    ref_model = _reference(detector, train)
    ref_loss, _ = ref_model.loss(_ultralytics_batch(images))  # (box, cls, dfl) × B
    model = copy.deepcopy(detector.model)
    det = copy.copy(detector)
    det.model = model.train() if train else model.eval()
    loss_fn = DetectionLoss(det, freeze=not train)
    total, parts = loss_fn(images, targets)
    print(f"train={train}: ours {total.item():.6f} ×B={2 * total.item():.6f}, ultralytics {ref_loss.sum().item():.6f}")
    torch.testing.assert_close(total * images.shape[0], ref_loss.sum(), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.stack([parts["box"], parts["cls"], parts["dfl"]]), ref_loss.detach() / 2,
                               rtol=1e-5, atol=1e-8)
    assert total.item() > 0


def test_gradient_reaches_images_only(detector) -> None:
    det = copy.copy(detector)
    det.model = copy.deepcopy(detector.model).train()  # freeze must switch it to eval
    loss_fn = DetectionLoss(det)
    bn_before = {k: v.clone() for k, v in det.model.state_dict().items()}
    images, targets = _batch()
    images = images[:, :, :60, :50].clone().requires_grad_(True)  # not a stride multiple: padded inside
    total, _ = loss_fn(images, targets)
    total.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert not det.model.training
    assert all(not p.requires_grad and p.grad is None for p in det.model.parameters())
    for k, v in det.model.state_dict().items():
        assert torch.equal(v, bn_before[k]), k


def test_background_images(detector) -> None:
    loss_fn = DetectionLoss(copy.deepcopy(detector))
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    empty = {"boxes": torch.zeros(0, 4), "classes": torch.zeros(0, dtype=torch.int64)}
    total, parts = loss_fn(images, [empty, dict(empty)])
    total.backward()
    assert torch.isfinite(total) and total > 0  # all-background still penalises confident scores
    assert parts["box"] == 0 and parts["dfl"] == 0
    assert images.grad.abs().sum() > 0
    _, targets = _batch()
    total, _ = loss_fn(images.detach(), [targets[0], empty])
    assert torch.isfinite(total)


def test_bad_inputs_raise(detector) -> None:
    loss_fn = DetectionLoss(copy.deepcopy(detector))
    images, targets = _batch()
    with pytest.raises(ValueError, match="B×3×H×W"):
        loss_fn(images[0], targets)
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        loss_fn(images, targets[:1])
    with pytest.raises(ValueError, match="N×4"):
        loss_fn(images, [{"boxes": torch.zeros(2, 5), "classes": torch.zeros(2)}, targets[1]])
    with pytest.raises(ValueError, match="class ids"):
        loss_fn(images, [{"boxes": torch.zeros(1, 4), "classes": torch.tensor([3])}, targets[1]])
    with pytest.raises(ValueError, match="2 boxes but 1 classes"):
        loss_fn(images, [{"boxes": torch.zeros(2, 4), "classes": torch.tensor([0])}, targets[1]])


def test_segmentation_ce() -> None:
    logits = torch.randn(2, 4, 8, 8)
    masks = torch.randint(0, 4, (2, 8, 8))
    masks[0, 0] = 255
    keep = masks != 255
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], masks[keep])
    torch.testing.assert_close(segmentation_ce(logits, masks), expected)
    with pytest.raises(ValueError):
        segmentation_ce(logits, masks[0])


def _tiny_segmenter():
    from downstream.segmentation import SegmenterConfig, build_segmenter

    torch.manual_seed(0)
    cfg = SegmenterConfig(arch="Unet", num_classes=3, encoder="resnet18", encoder_depth=3,
                          decoder_channels=[16, 8, 8])
    return build_segmenter(cfg).eval().requires_grad_(False)


@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_feature_consistency(kind: str, detector) -> None:
    """Each task's features (YOLO head inputs, smp encoder pyramid) feed the consistency term, grad to the images."""
    from downstream.task_losses import feature_consistency
    from downstream.tasks import get_task

    task = get_task(kind)
    model = detector if kind == "detection" else _tiny_segmenter()
    if kind == "detection":
        DetectionLoss(detector)  # freezes it (eval mode, no parameter grads)
    torch.manual_seed(1)
    clean = torch.rand(2, 3, 60, 70)
    feats = task.features(model, clean)
    assert len(feats) == 3 and all(f.ndim == 4 and f.shape[0] == 2 for f in feats)

    def features(x: torch.Tensor) -> list[torch.Tensor]:
        return task.features(model, x)

    assert float(feature_consistency(features, clean, clean)) == 0.0
    derained = (clean + 0.1 * torch.randn_like(clean)).clamp(0, 1).requires_grad_(True)
    loss = feature_consistency(features, derained, clean)
    assert float(loss.detach()) > 0
    loss.backward()
    assert derained.grad is not None and derained.grad.abs().sum() > 0
    assert all(p.grad is None for p in task.module(model).parameters())
