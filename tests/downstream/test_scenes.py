"""Synthetic scenes: determinism, layout, labels consistent across YOLO / COCO / masks, rain keeps names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from derain.synth import synthesize_folder
from downstream.datasets import CocoDetectionDataset, DatasetError, MaskSegmentationDataset, YoloDetectionDataset
from downstream.scenes import OBJECT_CLASSES, SEG_CLASSES, generate_scenes, render_scene, shape_sdf, split_indices


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return generate_scenes(tmp_path_factory.mktemp("scenes"), n=8, size=64, seed=3, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_other_seed_differs(scenes: dict, tmp_path: Path) -> None:
    generate_scenes(tmp_path / "again", n=8, size=64, seed=3, progress=False)
    assert _files(tmp_path / "again") == _files(scenes["root"])
    generate_scenes(tmp_path / "other", n=8, size=64, seed=4, progress=False)
    other = _files(tmp_path / "other")
    assert len(other) == len(_files(scenes["root"])) and other != _files(scenes["root"])


def test_layout_and_summary(scenes: dict) -> None:
    root = scenes["root"]
    assert scenes["images"] == {"train": 6, "val": 2}
    assert len(list((root / "det" / "images" / "val").glob("*.png"))) == 2
    assert len(list((root / "det" / "labels" / "train").glob("*.txt"))) == 6
    assert (root / "seg" / "classes.txt").read_text().split() == list(SEG_CLASSES)
    assert scenes["coco_json"]["val"] == root / "det" / "annotations" / "instances_val.json"
    assert sum(scenes["boxes"].values()) > 8  # several objects per image


def test_existing_output_needs_overwrite(scenes: dict, tmp_path: Path) -> None:
    generate_scenes(tmp_path, n=2, size=32, seed=0, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_scenes(tmp_path, n=2, size=32, seed=0, progress=False)
    generate_scenes(tmp_path, n=3, size=32, seed=0, progress=False, overwrite=True)
    assert len(list((tmp_path / "seg").rglob("*.png"))) == 6  # no stale files from the first run


@pytest.mark.parametrize("split", ["train", "val"])
def test_yolo_and_coco_agree_and_masks_load(scenes: dict, split: str) -> None:
    root = scenes["root"]
    yolo = YoloDetectionDataset(scenes["det_yaml"], split)
    coco = CocoDetectionDataset(root / "det" / "images" / split, scenes["coco_json"][split])
    seg = MaskSegmentationDataset(root / "seg" / split / "images", root / "seg" / split / "masks",
                                  root / "seg" / "classes.txt")
    assert yolo.names == coco.names == list(OBJECT_CLASSES) and seg.classes == list(SEG_CLASSES)
    assert len(yolo) == len(coco) == len(seg) == scenes["images"][split]
    for i in range(len(yolo)):
        assert yolo.image_path(i) == coco.image_path(i) and seg.image_path(i).name == yolo.image_path(i).name
        yt, ct = yolo.target(i), coco.target(i)
        np.testing.assert_allclose(yt["boxes"], ct["boxes"], atol=1e-3)
        np.testing.assert_array_equal(yt["classes"], ct["classes"])
        image, mask = seg[i]
        np.testing.assert_array_equal(image, yolo[i][0])
        for box, cls in zip(yt["boxes"].round().astype(int), yt["classes"], strict=True):
            x0, y0, x1, y1 = box
            assert (mask[y0:y1, x0:x1] == cls + 1).any()  # each box holds pixels of its class


def test_render_scene_boxes_are_tight_around_visible_pixels() -> None:
    img, mask, labels = render_scene(seed=1, index=0, size=96)
    assert img.shape == (96, 96, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= set(range(len(SEG_CLASSES)))
    assert labels
    for cls, (x0, y0, x1, y1) in labels:
        inside = mask[y0:y1, x0:x1] == cls + 1
        assert inside.any(axis=0)[[0, -1]].all() or inside.any(axis=1)[[0, -1]].all()


def test_shapes_contain_their_centre_except_ring() -> None:
    x = np.array([0.0, 100.0])
    for kind in OBJECT_CLASSES:
        sdf = shape_sdf(kind, x, np.zeros(2), 10.0)
        assert sdf[1] > 0 and (sdf[0] > 0) == (kind == "ring"), kind


def test_split_indices() -> None:
    s = split_indices(10, 0.25, seed=0)
    assert len(s["val"]) == 2 and sorted(s["train"] + s["val"]) == list(range(10))
    assert split_indices(2, 0.01, 0)["val"] and split_indices(2, 0.99, 0)["train"]
    with pytest.raises(ValueError):
        split_indices(1, 0.5, 0)
    with pytest.raises(ValueError):
        split_indices(10, 1.0, 0)


def test_rain_over_det_images_keeps_label_names(scenes: dict, tmp_path: Path) -> None:
    det = scenes["root"] / "det"
    synthesize_folder(det / "images", tmp_path / "rainy", "light", seed=0, progress=False)
    for split in ("train", "val"):
        clean = sorted(p.name for p in (det / "images" / split).glob("*.png"))
        rainy = sorted(p.name for p in (tmp_path / "rainy" / split).glob("*.png"))
        labels = sorted(p.stem + ".png" for p in (det / "labels" / split).glob("*.txt"))
        assert rainy == clean == labels
    assert not list((tmp_path / "rainy").rglob("*.txt"))
    clean = YoloDetectionDataset(scenes["det_yaml"], "val")
    rainy = clean.with_images_dir(tmp_path / "rainy" / "val")
    assert rainy.image_path(0) == tmp_path / "rainy" / "val" / clean.image_path(0).name
    np.testing.assert_array_equal(rainy[0][1]["boxes"], clean[0][1]["boxes"])
    assert not np.array_equal(rainy[0][0], clean[0][0]) and clean.images_dir == det / "images" / "val"
    seg_root = scenes["root"] / "seg"
    seg = MaskSegmentationDataset(seg_root / "val" / "images", seg_root / "val" / "masks", seg_root / "classes.txt")
    assert len(seg.with_images_dir(tmp_path / "rainy" / "val")) == len(seg)
    with pytest.raises(DatasetError, match="not found"):
        clean.with_images_dir(tmp_path / "rainy" / "train")
    with pytest.raises(DatasetError, match="not found"):
        seg.with_images_dir(tmp_path)


def test_synth_with_labels_makes_complete_rainy_datasets(tmp_path: Path) -> None:
    from derain.synth import synthesize_folder
    from downstream.datasets import MaskSegmentationDataset, YoloDetectionDataset
    from downstream.tasks import load_task_dataset

    generate_scenes(tmp_path / "clean", n=6, size=48, seed=1, progress=False)
    synthesize_folder(tmp_path / "clean/det", tmp_path / "heavy/det", "heavy", seed=0, progress=False,
                      with_labels=True)
    synthesize_folder(tmp_path / "clean/seg", tmp_path / "heavy/seg", "heavy", seed=0, progress=False,
                      with_labels=True)
    clean_det = YoloDetectionDataset(tmp_path / "clean/det/data.yaml", "val")
    rainy_det = YoloDetectionDataset(tmp_path / "heavy/det/data.yaml", "val")
    assert len(rainy_det) == len(clean_det)
    for i in range(len(clean_det)):
        np.testing.assert_array_equal(rainy_det.target(i)["boxes"], clean_det.target(i)["boxes"])
        assert not np.array_equal(rainy_det[i][0], clean_det[i][0])  # the photo got rain
    clean_seg = load_task_dataset("segmentation", "masks", tmp_path / "clean/seg", "val")
    rainy_seg = load_task_dataset("segmentation", "masks", tmp_path / "heavy/seg", "val")
    assert isinstance(rainy_seg, MaskSegmentationDataset)
    for i in range(len(clean_seg)):
        assert rainy_seg.mask_path(i).read_bytes() == clean_seg.mask_path(i).read_bytes()  # masks untouched
        assert not np.array_equal(rainy_seg[i][0], clean_seg[i][0])
    assert (tmp_path / "heavy/det/annotations").is_dir()
