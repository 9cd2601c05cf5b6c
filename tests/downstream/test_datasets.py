"""Task datasets: YOLO / COCO detection, mask segmentation, their validation errors and the real samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from downstream.datasets import (
    CocoDetectionDataset,
    DatasetError,
    MaskSegmentationDataset,
    YoloDetectionDataset,
    to_coco_dict,
)
from downstream.tasks import load_task_dataset


def _png(path: Path, w: int = 40, h: int = 20, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), 0 if mode != "RGB" else (10, 20, 30)).save(path)
    return path


def _yolo(tmp_path: Path, labels: dict[str, str], yaml_text: str | None = None) -> Path:
    """A YOLO set with 40×20 images ``a.png``, ``b.png`` in images/val and the given label files."""
    for stem in ("a", "b"):
        _png(tmp_path / "images" / "val" / f"{stem}.png")
    (tmp_path / "labels" / "val").mkdir(parents=True)
    for stem, text in labels.items():
        (tmp_path / "labels" / "val" / f"{stem}.txt").write_text(text)
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text(yaml_text or "val: images/val\nnames:\n  0: cat\n  1: dog\n")
    return yaml_path


def test_yolo_reads_boxes_in_pixels_and_backgrounds(tmp_path: Path) -> None:
    ds = YoloDetectionDataset(_yolo(tmp_path, {"a": "1 0.5 0.5 0.5 1.0\n\n0 0.25 0.25 0.1 0.1\n"}), "val")
    assert ds.names == ["cat", "dog"] and len(ds) == 2
    assert ds.image_size(0) == (20, 40) and ds.image_path(1).name == "b.png"
    image, target = ds[0]
    assert image.shape == (20, 40, 3) and image.dtype == np.float32
    np.testing.assert_allclose(target["boxes"], [[10, 0, 30, 20], [8, 4, 12, 6]], atol=1e-4)
    assert target["boxes"].dtype == np.float32 and target["classes"].tolist() == [1, 0]
    assert target["classes"].dtype == np.int64
    _, empty = ds[1]  # no label file: background image
    assert empty["boxes"].shape == (0, 4) and empty["classes"].shape == (0,)


def test_yolo_path_key_names_list_and_tolerance(tmp_path: Path) -> None:
    _yolo(tmp_path / "sub", {"a": "0 0.5 0.5 1.0004 0.5\n"})
    (tmp_path / "data.yaml").write_text("path: sub\nval: images/val\nnames: [cat, dog]\n")  # path: relative
    ds = YoloDetectionDataset(tmp_path / "data.yaml")
    assert ds.names == ["cat", "dog"] and ds.images_dir == tmp_path / "sub" / "images" / "val"
    np.testing.assert_allclose(ds.target(0)["boxes"], [[0, 5, 40, 15]], atol=1e-4)  # clipped within tolerance


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("0 0.5 0.5 0.2\n", "a.txt:1"),
        ("0 0.5 0.5 0.2 0.2\n0 0.5 x 0.2 0.2\n", "a.txt:2"),
        ("2 0.5 0.5 0.2 0.2\n", "out of range"),
        ("-1 0.5 0.5 0.2 0.2\n", "out of range"),
        ("0.5 0.5 0.5 0.2 0.2\n", "out of range"),
        ("0 0.95 0.5 0.2 0.2\n", "outside"),
        ("0 0.5 0.5 0.0 0.2\n", "zero"),
    ],
)
def test_yolo_bad_label_lines(tmp_path: Path, label: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        YoloDetectionDataset(_yolo(tmp_path, {"a": label}))


def test_yolo_label_without_image_missing_split_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"without its image.*c\.txt"):
        YoloDetectionDataset(_yolo(tmp_path / "one", {"c": "0 0.5 0.5 0.2 0.2\n"}))
    with pytest.raises(DatasetError, match="no 'train' split"):
        YoloDetectionDataset(_yolo(tmp_path / "two", {}), "train")
    yaml_path = _yolo(tmp_path / "three", {}, "val: images/nope\nnames: [cat]\n")
    with pytest.raises(DatasetError, match="images/nope"):
        YoloDetectionDataset(yaml_path)
    (tmp_path / "four" / "images" / "val").mkdir(parents=True)
    (tmp_path / "four" / "data.yaml").write_text("val: images/val\nnames: [cat]\n")
    with pytest.raises(DatasetError, match="no images"):
        YoloDetectionDataset(tmp_path / "four" / "data.yaml")
    with pytest.raises(DatasetError, match="ids must be"):
        YoloDetectionDataset(_yolo(tmp_path / "five", {}, "val: images/val\nnames: {0: a, 2: b}\n"))


def _coco(tmp_path: Path, anns: list[dict], cats: list[dict] | None = None, files: tuple[str, ...] = ("a.png",)
          ) -> Path:
    for name in files:
        _png(tmp_path / "img" / name)
    data = {
        "images": [{"id": 7 + k, "file_name": f, "height": 20, "width": 40} for k, f in enumerate(files)],
        "annotations": anns,
        "categories": cats or [{"id": 90, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_maps_category_ids_and_skips_crowd(tmp_path: Path) -> None:
    anns = [
        {"id": 1, "image_id": 7, "category_id": 90, "bbox": [1, 2, 10, 5], "area": 33.0, "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 40, 20], "iscrowd": 1},
    ]
    ds = CocoDetectionDataset(tmp_path / "img", _coco(tmp_path, anns))
    assert ds.names == ["cat", "dog"] and ds.category_ids == [3, 90] and ds.image_ids == [7]
    target = ds.target(0)
    np.testing.assert_allclose(target["boxes"], [[1, 2, 11, 7]])
    assert target["classes"].tolist() == [1]
    gt = to_coco_dict(ds)
    assert [a["category_id"] for a in gt["annotations"]] == [90, 3]
    assert gt["annotations"][0]["area"] == 33.0 and gt["annotations"][1]["iscrowd"] == 1
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    assert coco.getCatIds() == [3, 90] and len(coco.getAnnIds(imgIds=[7])) == 2


@pytest.mark.parametrize(
    ("anns", "message"),
    [
        ([{"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 1, 2, 2]}], "unknown category_id 5"),
        ([{"id": 1, "image_id": 8, "category_id": 3, "bbox": [1, 1, 2, 2]}], "unknown image_id"),
        ([{"id": 1, "image_id": 7, "category_id": 3, "bbox": [30, 1, 20, 2]}], "outside"),
        ([{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 1, 2]}], "bbox must be"),
    ],
)
def test_coco_bad_annotations(tmp_path: Path, anns: list[dict], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        CocoDetectionDataset(tmp_path / "img", _coco(tmp_path, anns))


def test_coco_missing_image_and_size_mismatch(tmp_path: Path) -> None:
    path = _coco(tmp_path, [])
    (tmp_path / "img" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"'a\.png'.*not found"):
        CocoDetectionDataset(tmp_path / "img", path)
    _png(tmp_path / "img" / "a.png", w=41)
    with pytest.raises(DatasetError, match="JSON says 40×20"):
        CocoDetectionDataset(tmp_path / "img", path)
    with pytest.raises(DatasetError, match="not found"):
        CocoDetectionDataset(tmp_path / "img", tmp_path / "nope.json")


@pytest.mark.parametrize(("section", "drop", "message"), [
    ("categories", "name", r"categories\[0\] lacks 'name'"),
    ("categories", "id", r"categories\[0\] lacks 'id'"),
    ("images", "file_name", r"images\[0\] lacks 'file_name' \(every COCO image needs id, file_name\)"),
    ("images", "id", r"images\[0\] lacks 'id'"),
])
def test_coco_missing_keys_are_named(tmp_path: Path, section: str, drop: str, message: str) -> None:
    path = _coco(tmp_path, [])
    data = json.loads(path.read_text())
    del data[section][0][drop]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message):
        CocoDetectionDataset(tmp_path / "img", path)


def _masks(tmp_path: Path, mask: np.ndarray | None = None, mode: str = "L") -> tuple[Path, Path]:
    _png(tmp_path / "images" / "x.png")
    (tmp_path / "masks").mkdir(exist_ok=True)
    if mask is not None:
        Image.fromarray(mask).convert(mode).save(tmp_path / "masks" / "x.png")
    return tmp_path / "images", tmp_path / "masks"


def test_masks_read_with_classes_file(tmp_path: Path) -> None:
    mask = np.zeros((20, 40), np.uint8)
    mask[5:10, 5:10], mask[0, 0] = 2, 255
    images, masks = _masks(tmp_path, mask)
    (tmp_path / "classes.txt").write_text("bg\nroad\ncar\n\n")
    ds = MaskSegmentationDataset(images, masks, tmp_path / "classes.txt")
    assert ds.classes == ["bg", "road", "car"] and len(ds) == 1 and ds.image_size(0) == (20, 40)
    image, got = ds[0]
    assert image.shape == (20, 40, 3) and got.dtype == np.int64
    np.testing.assert_array_equal(got, mask)


@pytest.mark.parametrize(
    ("mask", "mode", "message"),
    [
        (None, "L", "mask not found"),
        (np.zeros((20, 39), np.uint8), "L", "39×20 but its image is 40×20"),
        (np.zeros((20, 40), np.uint8), "RGB", "single-channel"),
        (np.full((20, 40), 3, np.uint8), "L", r"class ids \[3\]"),
    ],
)
def test_masks_errors(tmp_path: Path, mask: np.ndarray | None, mode: str, message: str) -> None:
    images, masks = _masks(tmp_path, mask, mode)
    with pytest.raises(DatasetError, match=message):
        MaskSegmentationDataset(images, masks, ["a", "b", "c"])


def test_masks_orphan_and_empty_classes(tmp_path: Path) -> None:
    images, masks = _masks(tmp_path, np.zeros((20, 40), np.uint8))
    with pytest.raises(DatasetError, match="no classes"):
        MaskSegmentationDataset(images, masks, [])
    Image.new("L", (40, 20)).save(masks / "y.png")
    with pytest.raises(DatasetError, match=r"without its image.*y\.png"):
        MaskSegmentationDataset(images, masks, ["a"])


def test_load_task_dataset_formats(tmp_path: Path) -> None:
    yaml_path = _yolo(tmp_path / "y", {"a": "0 0.5 0.5 0.2 0.2\n"})
    assert isinstance(load_task_dataset("detection", "yolo", yaml_path, "val"), YoloDetectionDataset)
    ann = _coco(tmp_path / "c", [])
    spec = {"images": str(tmp_path / "c" / "img"), "annotations": str(ann).replace("ann", "{split}")}
    (tmp_path / "c" / "val.json").write_text(ann.read_text())
    assert isinstance(load_task_dataset("det", "coco", spec, "val"), CocoDetectionDataset)
    images, masks = _masks(tmp_path / "m", np.zeros((20, 40), np.uint8))
    ds = load_task_dataset("segmentation", "masks", {"images": images, "masks": masks, "classes": ["a"]}, "val")
    assert isinstance(ds, MaskSegmentationDataset)
    with pytest.raises(ValueError, match="not for segmentation"):
        load_task_dataset("segmentation", "yolo", yaml_path, "val")
    with pytest.raises(ValueError, match="unknown task"):
        load_task_dataset("depth", "yolo", yaml_path, "val")
    with pytest.raises(ValueError, match="mapping with keys"):
        load_task_dataset("det", "coco", str(ann), "val")


def test_coco8_roundtrip_through_coco_json(shared_data: Path, tmp_path: Path) -> None:
    yolo = YoloDetectionDataset(shared_data / "coco8" / "data.yaml", "val")
    assert len(yolo.names) == 80 and len(yolo) == 4
    gt = to_coco_dict(yolo)
    path = tmp_path / "coco8_val.json"
    path.write_text(json.dumps(gt))
    coco = CocoDetectionDataset(yolo.images_dir, path)
    assert coco.names == yolo.names and coco.image_ids == yolo.image_ids
    for i in range(len(yolo)):
        assert coco.image_path(i) == yolo.image_path(i) and coco.image_size(i) == yolo.image_size(i)
        np.testing.assert_allclose(coco.target(i)["boxes"], yolo.target(i)["boxes"], atol=1e-3)
        np.testing.assert_array_equal(coco.target(i)["classes"], yolo.target(i)["classes"])
    image, target = yolo[0]
    assert image.shape[:2] == yolo.image_size(0) and len(target["boxes"]) == 2
    assert len(YoloDetectionDataset(shared_data / "coco8" / "data.yaml", "train")) == 4


def test_camvid_masks(shared_data: Path) -> None:
    ds = load_task_dataset("seg", "masks", shared_data / "camvid", "val")
    assert len(ds) == 21 and len(ds.classes) == 11 and ds.classes[0] == "Sky"
    image, mask = ds[0]
    assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
    assert set(np.unique(mask).tolist()) <= set(range(11)) | {255}


def test_header_size_follows_exif_orientation(tmp_path: Path) -> None:
    """Labels describe the upright image: the size a dataset checks them against is the upright one."""
    from PIL import Image

    from downstream.datasets import read_image_size

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° to display
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(tmp_path / "t.png", exif=exif)
    assert read_image_size(tmp_path / "t.png") == (10, 6)


def test_coco_duplicate_image_ids_are_refused(tmp_path: Path) -> None:
    """Two images with one id would put both images' boxes on one of them: refused, naming the ids."""
    path = _coco(tmp_path, [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 1, 2, 2]}],
                 files=("a.png", "b.png", "c.png", "d.png"))
    data = json.loads(path.read_text())
    data["images"][1]["id"] = 7
    data["images"][3]["id"] = 9
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"ann\.json: duplicate image ids \[7, 9\]") as exc:
        CocoDetectionDataset(tmp_path / "img", path)
    assert "\n" not in str(exc.value)


def test_files_list_what_the_first_images_are_read_from(tmp_path: Path) -> None:
    """What the bench fingerprints: index files, then each image and its label files (a missing one too)."""
    yaml_path = _yolo(tmp_path / "y", {"a": "0 0.5 0.5 0.2 0.2\n"})
    ds = YoloDetectionDataset(yaml_path)
    assert ds.files() == [yaml_path, tmp_path / "y/images/val/a.png", tmp_path / "y/labels/val/a.txt",
                          tmp_path / "y/images/val/b.png", tmp_path / "y/labels/val/b.txt"]
    assert ds.files(1) == ds.files()[:3]
    ann = _coco(tmp_path / "c", [])
    assert CocoDetectionDataset(tmp_path / "c/img", ann).files() == [ann, tmp_path / "c/img/a.png"]
    images, masks = _masks(tmp_path / "m", np.zeros((20, 40), np.uint8))
    assert MaskSegmentationDataset(images, masks, ["bg"]).files() == [images / "x.png", masks / "x.png"]
