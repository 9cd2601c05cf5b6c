"""Dataset readers and their configs: one line naming the key or file for what they cannot read, and nothing
accepted silently that changes what is scored (issue 27 items 12, 14, 15, 16)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from downstream.datasets import DatasetError, read_image_size
from downstream.tasks import load_task_dataset


def _jpg(path: Path, seed: int = 0, size: tuple[int, int] = (32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)
    return path


def test_a_truncated_jpeg_is_refused_when_the_dataset_opens(tmp_path: Path) -> None:
    """bench decodes and refuses it; ultralytics drops it from training with a warning: one rule, refused up front
    (header reads alone pass it). A JPEG not ending in its end marker but decoding in full (bytes after it) is read
    as it is."""
    whole = _jpg(tmp_path / "whole.jpg", size=(64, 48))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    with pytest.raises(DatasetError, match=r"cut\.jpg is truncated"):
        read_image_size(cut)
    unmarked = tmp_path / "unmarked.jpg"
    unmarked.write_bytes(whole.read_bytes() + b"\0" * 16)
    assert read_image_size(unmarked) == read_image_size(whole) == (48, 64)
    png = tmp_path / "cut.png"
    Image.open(whole).save(png)
    png.write_bytes(png.read_bytes()[:-40])
    with pytest.raises(DatasetError, match=r"cut\.png.*truncated"):
        read_image_size(png)


@pytest.mark.parametrize(("task", "format"), [("segmentation", "cityscapes"), ("segmentation", "acdc"),
                                              ("segmentation", "masks"), ("detection", "coco"),
                                              ("detection", "yolo"), ("detection", "voc"),
                                              ("detection", "bdd100k")])
@pytest.mark.parametrize("path", [5, ["a", "b"], {"images": 5, "gt": "x", "masks": "x", "classes": "x",
                                                  "annotations": "x", "labels": "x", "root": 5}])
def test_a_path_of_the_wrong_type_is_one_line_naming_path(task: str, format: str, path: Any) -> None:
    with pytest.raises(ValueError, match=r"path"):
        load_task_dataset(task, format, path)


def test_unknown_keys_of_a_path_mapping_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown path key.*'imgaes'"):
        load_task_dataset("segmentation", "cityscapes", {"images": "a", "gt": "b", "imgaes": "c"})
    with pytest.raises(ValueError, match=r"unknown path key.*'annotation'"):
        load_task_dataset("detection", "coco", {"images": "a", "annotations": "b", "annotation": "c"})


@pytest.mark.parametrize(("classes", "message"), [(5, "classes must be a list"),
                                                  (["car", "car"], "listed twice: car")])
def test_voc_classes_that_cannot_be_class_names(tmp_path: Path, classes: Any, message: str) -> None:
    _jpg(tmp_path / "x.jpg")
    (tmp_path / "x.xml").write_text("<annotation><size><width>32</width><height>24</height></size></annotation>")
    with pytest.raises(DatasetError, match=message):
        load_task_dataset("detection", "voc", {"root": str(tmp_path), "classes": classes})


def _voc_difficult(root: Path, value: str) -> Any:
    _jpg(root / "x.jpg")
    (root / "x.xml").write_text(
        "<annotation><size><width>32</width><height>24</height></size><object><name>car</name>"
        f"<difficult>{value}</difficult><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
        "</object></annotation>")
    return load_task_dataset("detection", "voc", str(root))


def test_voc_difficult_true_is_difficult_and_other_words_are_refused(tmp_path: Path) -> None:
    def difficult(v: str) -> int:  # scored as an iscrowd region (neither hit nor miss), not a target
        return sum(a["iscrowd"] for a in _voc_difficult(tmp_path / v, v).records[0].annotations)

    assert [difficult(v) for v in ("1", "true", "True", "0", "false")] == [1, 1, 1, 0, 0]
    with pytest.raises(DatasetError, match=r"x\.xml: object #0.*<difficult>.*'maybe'"):
        _voc_difficult(tmp_path / "maybe", "maybe")


@pytest.mark.parametrize(("frame", "message"), [
    ({"labels": 5}, "labels must be a list"),
    ({"labels": [5]}, "label #0 must be an object"),
    ({"attributes": "rainy"}, "attributes must be an object"),
    ({"labels": [{"category": "car", "box2d": {"x1": 1, "y1": 1, "x2": 5, "y2": 5}, "attributes": [1]}]},
     "label #0 attributes must be an object"),
])
def test_bdd100k_labels_or_attributes_of_the_wrong_type_name_the_frame(tmp_path: Path, frame: dict,
                                                                       message: str) -> None:
    _jpg(tmp_path / "images" / "a.jpg")
    (tmp_path / "det.json").write_text(json.dumps([{"name": "a.jpg", "attributes": {"weather": "clear"}, **frame}]))
    with pytest.raises(DatasetError, match=rf"det\.json: frame 'a\.jpg'.*{message}"):
        load_task_dataset("detection", "bdd100k", {"labels": str(tmp_path / "det.json"),
                                                   "images": str(tmp_path / "images"), "where": {"weather": "clear"}})
