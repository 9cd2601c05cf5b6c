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


# ------------------------------------------------------------------------------------------ instance segmentation copy

# sha256 over det/labels/**/*.txt and det/annotations/*.json (relative path + bytes, sorted) of the ``scenes`` fixture,
# recorded before inst/ was added: writing the instance copy must leave det/ (and seg/) as they were, the demo's
# results depend on them. A change of scikit-image's sample photos would also change it (the crops draw from the rng).
DET_LABELS_SHA256 = "8e3f09272ce09cbb680b74054aca40c33ffc911aac317bc00dfbe9914277f571"


def test_det_labels_unchanged_by_instance_output(scenes: dict) -> None:
    import hashlib

    root = scenes["root"]
    h = hashlib.sha256()
    for p in sorted([*(root / "det" / "labels").rglob("*.txt"), *(root / "det" / "annotations").glob("*.json")]):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    assert h.hexdigest() == DET_LABELS_SHA256


def test_det_and_seg_files_are_the_rendered_scene(scenes: dict) -> None:
    from PIL import Image

    from derain.imageio import read_image

    root = scenes["root"]
    for split in ("train", "val"):
        for path in sorted((root / "det" / "images" / split).glob("*.png")):
            img, mask, labels = render_scene(3, int(path.stem.split("_")[1]), 64)
            np.testing.assert_array_equal(np.round(read_image(path) * 255), np.round(img * 255))
            np.testing.assert_array_equal(np.asarray(Image.open(root / "seg" / split / "masks" / path.name)), mask)
            inst = root / "inst" / "images" / split / path.name
            assert inst.read_bytes() == path.read_bytes()
            assert len((root / "det" / "labels" / split / f"{path.stem}.txt").read_text().splitlines()) == len(labels)


@pytest.mark.parametrize("split", ["train", "val"])
def test_instance_copy_loads_and_matches_the_visible_pixels(scenes: dict, split: str) -> None:
    from downstream.instance import CocoInstanceDataset, YoloInstanceDataset
    from downstream.scenes import render_scene_instances

    root = scenes["root"]
    assert scenes["inst_yaml"] == root / "inst" / "data.yaml"
    assert scenes["inst_coco_json"][split] == root / "inst" / "annotations" / f"instances_{split}.json"
    det = YoloDetectionDataset(scenes["det_yaml"], split)
    yolo = YoloInstanceDataset(scenes["inst_yaml"], split)
    coco = CocoInstanceDataset(root / "inst" / "images" / split, scenes["inst_coco_json"][split])
    assert yolo.names == coco.names == list(OBJECT_CLASSES) and len(yolo) == len(coco) == len(det)
    assert coco.image_ids == det.image_ids and coco.category_ids == [k + 1 for k in range(len(OBJECT_CLASSES))]
    single_part = 0
    for i in range(len(det)):
        assert yolo.image_path(i).name == coco.image_path(i).name == det.image_path(i).name
        _, _, labels, visible = render_scene_instances(3, int(det.image_path(i).stem.split("_")[1]), 64)
        dt, yt, ct = det.target(i), yolo.target(i), coco.target(i)
        assert dt["classes"].tolist() == yt["classes"].tolist() == ct["classes"].tolist() == [c for c, _ in labels]
        np.testing.assert_allclose(ct["boxes"], dt["boxes"], atol=1e-3)
        assert (yt["boxes"][:, :2] >= dt["boxes"][:, :2] - 1e-3).all()  # polygon extent: within the pixel box
        assert (yt["boxes"][:, 2:] <= dt["boxes"][:, 2:] + 1e-3).all()
        for y, c, v in zip(yt["masks"], ct["masks"], visible, strict=True):
            np.testing.assert_array_equal(c, v)  # COCO polygons along pixel edges decode exactly
            assert (y >= v).all()  # YOLO: every visible pixel, plus the joining lines of separate parts
            iou = (y & v).sum() / (y | v).sum()
            assert iou > 0.8
            if len(_parts(v)) == 1:
                single_part += 1
                assert iou > 0.9
    assert single_part > 0


def _parts(mask: np.ndarray) -> list:
    from downstream.scenes import _outlines

    return _outlines(mask, False)


def test_instance_polygons_of_a_ring_and_split_object() -> None:
    from pycocotools import mask as mask_utils

    from downstream.instance import polygon_mask
    from downstream.scenes import coco_polygons, yolo_polygon

    yy, xx = np.mgrid[:40, :40] + 0.5
    ring = np.abs(np.hypot(xx - 20, yy - 20) - 12) < 5  # a hole in the middle
    split = ring.copy()
    split[:, 18:23] = False  # two halves
    for mask in (ring, split):
        polygons = coco_polygons(mask)
        assert len(polygons) == (1 if mask is ring else 2)
        decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 40, 40))).astype(bool)
        np.testing.assert_array_equal(decoded, mask)
        yolo = polygon_mask(yolo_polygon(mask), 40, 40)
        assert (yolo >= mask).all() and (yolo & ~mask).sum() <= 12  # one joining line at most
    line = np.zeros((10, 10), bool)
    line[2:8, 4] = True  # one pixel wide: its centre polygon has no width, the pixel-edge outline is used
    xy = yolo_polygon(line)
    assert np.ptp(xy, axis=0).min() > 0 and (polygon_mask(xy, 10, 10) >= line).all()
