"""Task models are scored only on datasets whose classes they predict in the same order (issue 27 item 4): the
names a YOLO .pt or a segmenter.json carries are compared with the dataset's, not only their count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from downstream.tasks import check_class_names, get_task


def _yolo_pt(path: Path, names: list[str]) -> Path:
    """A tiny ultralytics checkpoint whose model carries class ``names``, as a trained best.pt does."""
    from downstream.detection import offline_ultralytics

    offline_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel(cfg="yolo11n.yaml", nc=len(names), verbose=False)
    net.names = dict(enumerate(names))
    torch.save({"model": net, "train_args": {}}, path)
    return path


def test_a_detector_with_the_classes_in_another_order_is_refused_naming_both(tmp_path: Path) -> None:
    task = get_task("detection")
    pt = _yolo_pt(tmp_path / "best.pt", ["dog", "cat"])
    assert task.load_model(pt, ["dog", "cat"]).names == ["dog", "cat"]
    with pytest.raises(ValueError, match=r"best\.pt predicts classes \[dog, cat\] but the dataset's are \[cat, dog\] "
                                         r"\(the same classes in another order\): class 0 would be scored as 'cat'"):
        task.load_model(pt, ["cat", "dog"])
    with pytest.raises(ValueError, match=r"\[dog, cat\] but the dataset's are \[car, bus\]"):
        task.load_model(pt, ["car", "bus"])
    task.load_model("yolo11n.yaml", ["cat", "dog"])  # built for the dataset: no names of its own to compare


def test_a_segmenter_with_other_classes_is_refused(tmp_path: Path) -> None:
    from downstream.segmentation import SegmenterConfig, build_segmenter, save_segmenter

    cfg = SegmenterConfig(encoder_depth=3, decoder_channels=8, num_classes=2, classes=["road", "sky"])
    folder = save_segmenter(build_segmenter(cfg), tmp_path / "seg")
    task = get_task("segmentation")
    assert task.load_model(folder, ["road", "sky"]).classes == ["road", "sky"]
    with pytest.raises(ValueError, match=r"seg predicts classes \[road, sky\] but the dataset's are \[sky, road\]"):
        task.load_model(folder, ["sky", "road"])
    unnamed = save_segmenter(build_segmenter(SegmenterConfig(encoder_depth=3, decoder_channels=8)), tmp_path / "u")
    task.load_model(unnamed, ["sky", "road"])  # saved without class names: only the count is known


def test_names_only_where_both_sides_carry_them() -> None:
    check_class_names(None, ["a", "b"], "m")
    check_class_names(["0", "1"], ["a", "b"], "m")
    check_class_names(["a", "b"], ["0", "1"], "m")
    with pytest.raises(ValueError, match=r"class 1 would be scored as 'c'"):
        check_class_names(["a", "b"], ["a", "c"], "m")
