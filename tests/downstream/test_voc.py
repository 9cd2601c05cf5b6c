"""Pascal VOC XML detection (format: voc): the devkit layout and the flat "XML next to each image" layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from downstream.datasets import DatasetError, to_coco_dict
from downstream.metrics import coco_map
from downstream.tasks import load_task_dataset
from downstream.voc import open_voc


def voc_xml(filename: str, objects: list[tuple[str, int, int, int, int, int]], w: int = 64, h: int = 48,
            size: bool = True) -> str:
    """An annotation XML as the VOC devkit writes it; objects are ``(name, xmin, ymin, xmax, ymax, difficult)``."""
    objs = "".join(f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
                   f"<difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                   f"<ymax>{y2}</ymax></bndbox></object>" for n, x1, y1, x2, y2, d in objects)
    size_xml = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if size else ""
    return (f"<annotation><folder>VOC2007</folder><filename>{filename}</filename><source><database>The VOC2007 "
            f"Database</database></source>{size_xml}<segmented>0</segmented>{objs}</annotation>")


OBJECTS = {"000005": [("car", 10, 10, 30, 25, 0), ("person", 40, 5, 43, 40, 0), ("person", 1, 1, 8, 8, 1)],
           "000007": [("car", 2, 20, 60, 46, 0)], "000009": [("bicycle", 5, 5, 20, 20, 0)]}


def devkit_layout(root: Path, w: int = 64, h: int = 48) -> Path:
    """``VOCdevkit/VOC2007`` with Annotations, JPEGImages and ImageSets/Main/{train,val}.txt (000009 in train)."""
    voc = root / "VOCdevkit/VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id, objects in OBJECTS.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", objects, w, h))
    (voc / "ImageSets/Main/val.txt").write_text("000005\n000007\n")
    (voc / "ImageSets/Main/train.txt").write_text("000009\n")
    return voc


def test_devkit_layout_boxes_classes_and_difficult(tmp_path: Path) -> None:
    voc = devkit_layout(tmp_path)
    ds = load_task_dataset("detection", "voc", str(voc), "val")
    assert ds.names == ["bicycle", "car", "person"] and len(ds) == 2  # collected over all Annotations/, sorted
    np.testing.assert_allclose(ds.target(0)["boxes"], [[9, 9, 30, 25], [39, 4, 43, 40]])  # 1-based inclusive
    assert [ds.names[c] for c in ds.target(0)["classes"]] == ["car", "person"]
    assert [a for a in ds.records[0].annotations if a["iscrowd"]] == [
        {"image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 8.0, 8.0], "area": 64.0, "iscrowd": 1}]  # difficult
    given = open_voc({"root": str(voc), "classes": ["person", "car", "bicycle"]}, "val")
    assert [given.names[c] for c in given.target(0)["classes"]] == ["car", "person"]


def test_difficult_objects_are_neither_misses_nor_false_positives(tmp_path: Path) -> None:
    """With pycocotools: finding every non-difficult object scores AP 1 whether or not the difficult one is found."""
    ds = open_voc(str(devkit_layout(tmp_path)), "val")
    gt = to_coco_dict(ds)
    found = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
             for a in gt["annotations"] if not a["iscrowd"]]
    difficult = {"image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 8.0, 8.0], "score": 0.95}
    assert coco_map(gt, found)["per_class"]["person"] == pytest.approx(1.0)
    assert coco_map(gt, [*found, difficult])["per_class"]["person"] == pytest.approx(1.0)


def test_flat_layout_and_errors_name_the_file(tmp_path: Path) -> None:
    flat = tmp_path / "dawn/rain"
    flat.mkdir(parents=True)
    for name, objects in (("rain_storm-001", [("car", 3, 3, 20, 20, 0)]), ("rain_storm-002", [])):
        Image.new("RGB", (64, 48)).save(flat / f"{name}.jpg")
        (flat / f"{name}.xml").write_text(voc_xml(f"{name}.jpg", objects))
    ds = open_voc({"root": str(flat), "classes": ["bicycle", "bus", "car"]})
    assert len(ds) == 2 and ds.names == ["bicycle", "bus", "car"] and len(ds.target(1)["boxes"]) == 0
    assert open_voc(str(flat)).names == ["car"]
    (flat / "rain_storm-003.jpg").write_bytes((flat / "rain_storm-001.jpg").read_bytes())
    with pytest.raises(DatasetError, match=r"image without its annotation XML: .*rain_storm-003\.jpg"):
        open_voc(str(flat))
    (flat / "rain_storm-003.xml").write_text(voc_xml("rain_storm-003.jpg", [], size=False))
    with pytest.raises(DatasetError, match=r"rain_storm-003\.xml: no <size>"):
        open_voc(str(flat))
    (flat / "rain_storm-003.xml").write_text(voc_xml("rain_storm-003.jpg", [("horse", 1, 1, 5, 5, 0)]))
    with pytest.raises(DatasetError, match=r"rain_storm-003\.xml: object #0: unknown class 'horse'"):
        open_voc({"root": str(flat), "classes": ["car"]})
    (flat / "rain_storm-003.jpg").unlink()
    with pytest.raises(DatasetError, match=r"annotation without its image: .*rain_storm-003\.xml"):
        open_voc(str(flat))


def test_bench_over_the_devkit_layout(tmp_path: Path) -> None:
    from derain.config import load_config
    from eval.bench import BenchConfig, run_bench

    voc = devkit_layout(tmp_path, w=64, h=64)
    spec = f"datasets=[{{name: voc, task: detection, format: voc, path: {voc}, model: yolo11n.yaml, imgsz: 64}}]"
    cfg = load_config(BenchConfig, None, [f"out={tmp_path / 'run'}", "device=cpu", "severities=[light]", "samples=0",
                                          "bootstrap=0", spec, "derainers=[{name: identity, model: identity}]"])
    res = pd.read_csv(run_bench(cfg, progress=False) / "results.csv")
    assert set(res.severity) >= {"none", "light"} and {"map", "map50", "psnr_y"} <= set(res.metric)


def test_files_list_each_image_and_its_xml(tmp_path: Path) -> None:
    """What the bench fingerprints: an edited XML recomputes the cells that read it."""
    voc = devkit_layout(tmp_path)
    ds = load_task_dataset("detection", "voc", str(voc), "val")
    assert ds.files() == [voc / "JPEGImages/000005.jpg", voc / "Annotations/000005.xml",
                          voc / "JPEGImages/000007.jpg", voc / "Annotations/000007.xml"]
