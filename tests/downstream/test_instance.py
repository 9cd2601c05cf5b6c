"""Instance segmentation: YOLO-seg / COCO datasets, the YOLO-seg adapter, its loss, the evaluator, and agreement of
our mask mAP with ultralytics' validator."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from downstream.datasets import DatasetError
from downstream.detection import train_detector
from downstream.instance import (
    CocoInstanceDataset,
    InstanceEvaluator,
    InstanceSegmentationLoss,
    YoloInstanceDataset,
    load_instance_segmenter,
    to_coco_instances,
)
from downstream.metrics import coco_map, masks_to_rle, predictions_to_coco


def _image(path: Path, w: int = 20, h: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (10, 10, 10)).save(path)


def _yolo_set(root: Path, lines: str, names: str = "[a, b]") -> Path:
    _image(root / "images" / "val" / "x.png")
    (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "val" / "x.txt").write_text(lines)
    (root / "data.yaml").write_text(f"val: images/val\nnames: {names}\n")
    return root / "data.yaml"


# ------------------------------------------------------------------------------------------------ datasets


def test_yolo_seg_dataset_polygons_to_masks_and_boxes(tmp_path: Path) -> None:
    # 20×10 image: a 5×5 square through pixel centres 2.5..6.5 (class 1) and a triangle (class 0)
    data = _yolo_set(tmp_path, "1 0.125 0.25 0.325 0.25 0.325 0.65 0.125 0.65\n\n0 0.5 0.1 0.9 0.1 0.9 0.9\n")
    ds = YoloInstanceDataset(data, "val")
    assert len(ds) == 1 and ds.names == ["a", "b"] and ds.image_size(0) == (10, 20)
    image, t = ds[0]
    assert image.shape == (10, 20, 3) and set(t) == {"boxes", "classes", "masks"}
    assert t["classes"].tolist() == [1, 0] and t["masks"].shape == (2, 10, 20) and t["masks"].dtype == bool
    np.testing.assert_allclose(t["boxes"][0], [2.5, 2.5, 6.5, 6.5], atol=1e-5)  # the polygon's extent
    square = np.zeros((10, 20), bool)
    square[2:7, 2:7] = True  # ultralytics' fillPoly: truncated coordinates, boundary pixels included
    np.testing.assert_array_equal(t["masks"][0], square)
    assert t["masks"][1, 5, 16] and not t["masks"][1, 8, 11]  # inside / outside the triangle
    rainy = ds.with_images_dir(tmp_path / "images" / "val")
    np.testing.assert_array_equal(rainy.target(0)["masks"], t["masks"])


@pytest.mark.parametrize("line,match", [
    ("0 0.5 0.5 0.2 0.2", r"x\.txt:1: box-only line"),
    ("2 0.1 0.1 0.5 0.1 0.5 0.5", r"x\.txt:1: class id 2 out of range"),
    ("0 0.1 0.1 0.5 0.1 0.5", r"x\.txt:1: expected .*at least 3 points.*got 6"),
    ("0 0.1 0.1 1.5 0.1 0.5 0.5", r"x\.txt:1: box .* outside"),
])
def test_yolo_seg_label_errors(tmp_path: Path, line: str, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        YoloInstanceDataset(_yolo_set(tmp_path, line + "\n"), "val")


def _coco_set(root: Path, annotations: list[dict], files: tuple[str, ...] = ("x.png",)) -> Path:
    for name in files:
        _image(root / "images" / name)
    data = {"images": [{"id": 7, "file_name": "x.png", "height": 10, "width": 20}],
            "annotations": annotations, "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}]}
    path = root / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _rle(mask: np.ndarray, compressed: bool) -> dict:
    if compressed:
        return masks_to_rle(mask[None])[0]
    flat = mask.T.reshape(-1).astype(np.int8)  # column-major runs, starting with a (possibly empty) run of zeros
    counts = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


@pytest.mark.parametrize("compressed", [False, True])
def test_coco_instances_polygons_rle_and_crowd(tmp_path: Path, compressed: bool) -> None:
    blob = np.zeros((10, 20), bool)
    blob[1:4, 10:18] = True
    blob[3:9, 12:14] = True
    anns = [
        {"id": 1, "image_id": 7, "category_id": 5, "bbox": [2, 2, 5, 5], "iscrowd": 0,
         "segmentation": [[2, 2, 7, 2, 7, 7, 2, 7]]},  # polygon along pixel edges: pixels 2..6
        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [10, 1, 8, 8], "iscrowd": 0,
         "segmentation": _rle(blob, compressed)},
        {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0, 0, 2, 2], "iscrowd": 1,
         "segmentation": _rle(np.pad(np.ones((2, 2), bool), ((0, 8), (0, 18))), True)},
    ]
    ds = CocoInstanceDataset(tmp_path / "images", _coco_set(tmp_path, anns))
    assert ds.names == ["a", "b"] and ds.category_ids == [3, 5] and ds.image_ids == [7]
    t = ds[0][1]
    assert t["classes"].tolist() == [1, 0] and t["masks"].shape == (2, 10, 20)
    square = np.zeros((10, 20), bool)
    square[2:7, 2:7] = True
    np.testing.assert_array_equal(t["masks"][0], square)
    np.testing.assert_array_equal(t["masks"][1], blob)
    gt = to_coco_instances(ds)
    assert [a["area"] for a in gt["annotations"]] == [25.0, float(blob.sum()), 4.0]  # crowd: area of its RLE
    assert gt["annotations"][2]["iscrowd"] == 1 and gt["images"][0]["height"] == 10


@pytest.mark.parametrize("change,match", [
    ({"segmentation": [[1, 1, 5, 1]]}, "at least 3 points"),
    ({"segmentation": {"size": [10, 21], "counts": "abc"}}, r"RLE size \[10, 21\]"),
    ({"segmentation": {"size": [10, 20], "counts": [5, 5]}}, "sum to 10"),
    ({"segmentation": None}, "segmentation must be"),
    ({"category_id": 9}, "unknown category_id 9"),
])
def test_coco_instance_errors(tmp_path: Path, change: dict, match: str) -> None:
    ann = {"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 2, 5, 5], "iscrowd": 0,
           "segmentation": [[2, 2, 7, 2, 7, 7]], **change}
    with pytest.raises(DatasetError, match=match):
        CocoInstanceDataset(tmp_path / "images", _coco_set(tmp_path, [ann]))


def test_coco_instance_missing_image(tmp_path: Path) -> None:
    path = _coco_set(tmp_path, [], files=())
    with pytest.raises(DatasetError, match=r"ann\.json: image 'x\.png' \(id 7\) not found"):
        CocoInstanceDataset(tmp_path / "images", path)


# ------------------------------------------------------------------------------------------------ metrics


def _perfect(ds: YoloInstanceDataset) -> list[dict]:
    preds = []
    for i in range(len(ds)):
        t = ds.target(i)
        preds.append({**t, "scores": np.linspace(0.9, 0.5, len(t["classes"]))})
    return preds


def test_ground_truth_as_predictions_scores_one_and_evaluator_matches_coco_map(tmp_path: Path, shapes) -> None:
    data = shapes(tmp_path / "shapes", n=6, segments=True)
    ds = YoloInstanceDataset(data, "val")
    gt = to_coco_instances(ds)
    assert all("segmentation" in a and a["area"] > 0 for a in gt["annotations"])
    preds = _perfect(ds)
    rows = predictions_to_coco(preds, ds.image_ids, ds.category_ids)
    for iou_type in ("segm", "bbox"):
        assert coco_map(gt, rows, iou_type=iou_type)["map"] == pytest.approx(1.0)

    # an imperfect run: drop one prediction, shrink a mask, add a false positive
    preds[0] = {k: v[1:] for k, v in preds[0].items()}
    preds[1]["masks"] = preds[1]["masks"].copy()
    preds[1]["masks"][0, :, : int(preds[1]["boxes"][0, 0]) + 8] = False
    preds[2] = {k: np.concatenate([v, v[:1]]) for k, v in preds[2].items()}
    preds[2]["classes"][-1] = 1 - preds[2]["classes"][-1]
    ev = InstanceEvaluator(ds.names)
    for i in range(0, len(ds), 4):
        idx = range(i, min(i + 4, len(ds)))
        ev.update([preds[j] for j in idx], [ds.target(j) for j in idx], [ds.image_ids[j] for j in idx])
    out = ev.compute(image_stats=True)
    rows = predictions_to_coco(preds, ds.image_ids, ds.category_ids)
    mask, box = coco_map(gt, rows, iou_type="segm"), coco_map(gt, rows, iou_type="bbox")
    assert out["mask_map"] == pytest.approx(mask["map"]) and out["mask_map50"] == pytest.approx(mask["map50"])
    assert out["box_map"] == pytest.approx(box["map"]) and out["box_map50"] == pytest.approx(box["map50"])
    assert out["mask_map"] < out["box_map"] < 1
    assert out["per_class"] == pytest.approx(mask["per_class"]) and list(out["per_class50"]) == ds.names
    assert [(s["kind"], s["prefix"]) for s in out["image_stats"]] == [("coco", "mask_"), ("coco", "box_")]
    assert len(out["image_stats"][0]["stats"]["categories"]) == 2
    with pytest.raises(ValueError, match="need 'masks'"):
        InstanceEvaluator(ds.names).update(preds[:1], [{"boxes": np.zeros((0, 4)), "classes": []}], [1])


# ------------------------------------------------------------------------------------------------ model and loss


def test_untrained_segmenter_predicts_masks_at_input_size() -> None:
    seg = load_instance_segmenter("yolo11n-seg.yaml", nc=2)
    assert seg.nc == 2 and seg.stride == 32
    images = torch.rand(2, 3, 64, 80)
    preds = seg.predict(images, max_det=40)
    preds += seg.predict(images, imgsz=64, max_det=40, retina_masks=True)  # scaled by 0.8, masks at network size
    assert len(preds) == 4
    for p in preds:
        n = len(p["scores"])
        assert n <= 40 and p["boxes"].shape == (n, 4) and p["classes"].shape == (n,)
        assert p["masks"].shape == (n, 64, 80) and p["masks"].dtype == torch.bool
        assert p["boxes"].dtype == torch.float32 and p["classes"].dtype == torch.int64
        if n:
            assert p["boxes"][:, [0, 2]].min() >= 0 and p["boxes"][:, [0, 2]].max() <= 80
            assert p["boxes"][:, [1, 3]].min() >= 0 and p["boxes"][:, [1, 3]].max() <= 64
            assert 0 <= int(p["classes"].min()) and int(p["classes"].max()) < 2
            for box, mask in zip(p["boxes"], p["masks"], strict=True):  # masks are cropped to their box
                ys, xs = torch.nonzero(mask, as_tuple=True)
                if len(xs):
                    assert xs.min() >= box[0] - 2 and xs.max() <= box[2] + 2
                    assert ys.min() >= box[1] - 2 and ys.max() <= box[3] + 2


def test_masks_map_back_through_the_letterbox() -> None:
    """64² input at imgsz 64 runs at 96² (16 px padding each side); default masks are at ¼ of that (24², 4 px each).
    Mapping back = ultralytics' ``scale_masks`` (crop the padding, bilinear resize) thresholded at 0.5."""
    from ultralytics.utils.ops import scale_masks

    from downstream.instance import _masks_to_input

    low = torch.zeros(1, 24, 24)
    low[0, 5:9, 6:10] = 1  # network px rows [20, 36), cols [24, 40) -> input rows [4, 20), cols [8, 24)
    ours = _masks_to_input(low, (96, 96), (1.0, 1.0), (16, 16), (64, 64))
    assert torch.equal(ours, scale_masks(low[None], (64, 64), ratio_pad=((0.25, 0.25), (4, 4)))[0] > 0.5)
    ys, xs = torch.nonzero(ours[0], as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (4, 19, 8, 23) and int(ours.sum()) == 16 * 16 - 4  # corners
    half = _masks_to_input(low, (96, 96), (0.5, 0.5), (16, 16), (128, 128))  # a 128² input shown at half size
    assert torch.equal(half, scale_masks(low[None], (128, 128), ratio_pad=((0.125, 0.125), (4, 4)))[0] > 0.5)
    full = torch.zeros(1, 96, 96)  # retina masks are at the network resolution: a plain crop
    full[0, 20:36, 24:40] = 1
    expected = torch.zeros(1, 64, 64, dtype=torch.bool)
    expected[0, 4:20, 8:24] = True
    assert torch.equal(_masks_to_input(full, (96, 96), (1.0, 1.0), (16, 16), (64, 64)), expected)
    assert _masks_to_input(low[:0], (96, 96), (1.0, 1.0), (16, 16), (64, 64)).shape == (0, 64, 64)


def test_loader_refuses_detection_models_and_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an instance segmentation model.*Detect"):
        load_instance_segmenter("yolo11n.yaml", nc=2)
    with pytest.raises(FileNotFoundError, match=r"best\.pt.*never downloads.*yolo11n-seg\.yaml"):
        load_instance_segmenter(tmp_path / "best.pt")
    with pytest.raises(ValueError, match="local .pt or a model .yaml"):
        load_instance_segmenter(tmp_path / "model.onnx")


def test_loss_is_finite_and_reaches_the_images() -> None:
    seg = load_instance_segmenter("yolo11n-seg.yaml", nc=2)
    loss = InstanceSegmentationLoss(seg)
    assert loss.overlap and loss.mask_ratio == 4
    masks = torch.zeros(3, 64, 80, dtype=torch.bool)
    masks[0, 10:50, 8:40] = True
    masks[1, 5:30, 30:70] = True
    masks[2, 20:40, 25:45] = True  # overlaps both: the smallest is drawn on top
    targets = [
        {"boxes": torch.tensor([[8.0, 10, 40, 50], [30, 5, 70, 30], [25, 20, 45, 40]]),
         "classes": torch.tensor([0, 1, 1]), "masks": masks},
        {"boxes": torch.zeros(0, 4), "classes": torch.zeros(0, dtype=torch.int64),
         "masks": torch.zeros(0, 64, 80, dtype=torch.bool)},
    ]
    ordered, index = loss.mask_batch(targets, (64, 80), (64, 96))
    assert index.shape == (2, 16, 24) and int(index[0].max()) == 3 and int(index[1].max()) == 0
    assert ordered[0]["classes"].tolist() == [0, 1, 1]  # by area: 32×40, 40×25, 20×20
    assert int(index[0, 7, 8]) == 3  # the small square wins where all three overlap
    images = torch.rand(2, 3, 64, 80, requires_grad=True)
    total, parts = loss(images, targets)
    assert total.ndim == 0 and torch.isfinite(total)
    assert set(parts) == {"box", "seg", "cls", "dfl", "sem"} and parts["seg"] > 0
    assert float(sum(parts.values())) == pytest.approx(float(total.detach()), rel=1e-5)
    total.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in seg.model.parameters())  # frozen
    with pytest.raises(ValueError, match="masks must be 3×64×80"):
        loss(images, [{**targets[0], "masks": masks[:2]}, targets[1]])


# --------------------------------------------------------------------------- ours vs ultralytics' validator


@pytest.mark.slow
def test_mask_map50_agrees_with_ultralytics_validator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      one_thread, shapes) -> None:
    """Train a tiny YOLO-seg model, then score it twice: our predict + pycocotools (segm, bbox) vs ``YOLO.val``.

    Default masks vs the default validator (both score ¼-resolution masks, but ultralytics against its ¼-resolution
    ground truth and we against the exact one at the input size, so mask mAP50-95 differs more than mAP50), and
    ``retina_masks`` vs its accurate mode (``save_txt=True``, ``process_mask_native``). 50 epochs put the model at
    mask mAP50 ≈ 0.95, not yet saturated.
    """
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    data = shapes(tmp_path / "shapes", segments=True)
    t0 = time.perf_counter()
    best = train_detector(
        data, model="yolo11n-seg.yaml", task="segment", epochs=50, imgsz=64, batch=16, out_dir=tmp_path / "runs",
        seed=0, val=False, optimizer="AdamW", lr0=0.003, warmup_epochs=0, mosaic=0.0, translate=0.0, scale=0.0,
        hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, fliplr=0.0, cache="ram", verbose=False,
    )
    assert best.is_file() and best.suffix == ".pt"
    t1 = time.perf_counter()
    val_args = {"data": str(data), "imgsz": 64, "batch": 16, "conf": 0.001, "iou": 0.7, "plots": False,
                "device": "cpu", "workers": 0, "project": str(tmp_path / "val"), "name": "val", "verbose": False}
    theirs = YOLO(str(best)).val(**val_args)
    theirs_native = YOLO(str(best)).val(**val_args, save_txt=True)  # accurate mode: process_mask_native
    t2 = time.perf_counter()

    ds = YoloInstanceDataset(data, split="val")
    seg = load_instance_segmenter(best)
    assert seg.nc == len(ds.names)
    gt = to_coco_instances(ds)

    def score(retina_masks: bool) -> tuple[dict, dict]:
        preds = []
        for i in range(0, len(ds), 16):
            batch = torch.stack([torch.from_numpy(ds[j][0]).permute(2, 0, 1) for j in range(i, min(i + 16, len(ds)))])
            preds += seg.predict(batch, imgsz=64, conf=0.001, iou=0.7, retina_masks=retina_masks)
        rows = predictions_to_coco(preds, ds.image_ids, ds.category_ids)
        return coco_map(gt, rows, iou_type="segm"), coco_map(gt, rows, iou_type="bbox")

    (mask, box), (native, _) = score(False), score(True)
    print(f"\nmask mAP50 ours {mask['map50']:.4f} vs ultralytics {theirs.seg.map50:.4f} (mAP {mask['map']:.4f} vs "
          f"{theirs.seg.map:.4f}); retina mask mAP50 ours {native['map50']:.4f} vs ultralytics save_txt "
          f"{theirs_native.seg.map50:.4f} (mAP {native['map']:.4f} vs {theirs_native.seg.map:.4f}); box mAP50 ours "
          f"{box['map50']:.4f} vs {theirs.box.map50:.4f} (mAP {box['map']:.4f} vs {theirs.box.map:.4f}); "
          f"train {t1 - t0:.1f}s, ultralytics val ×2 {t2 - t1:.1f}s, ours ×2 {time.perf_counter() - t2:.1f}s")
    assert theirs.seg.map50 > 0.3, "the tiny model did not learn; the comparison would be meaningless"
    assert mask["map50"] == pytest.approx(float(theirs.seg.map50), abs=0.03)
    assert box["map50"] == pytest.approx(float(theirs.box.map50), abs=0.03)
    assert native["map50"] == pytest.approx(float(theirs_native.seg.map50), abs=0.03)
    assert mask["map"] == pytest.approx(float(theirs.seg.map), abs=0.06)
