"""The bench's detection scores equal the official evaluators' on the same predictions (tolerance 1e-4).

Oracles: pycocotools (a dependency) and faster-coco-eval (when installed) on the dataset's own annotation file;
the bdd100k toolkit's detection eval (scalabel, needs pydantic < 2) and py-faster-rcnn's port of the VOC devkit
through the fixtures ``tests/fixtures/official_eval`` made by its ``make_fixtures.py`` (the command is in its
docstring). Every fixture holds crowd / ignored / difficult objects and boxes at the image border.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from downstream.bdd100k import open_bdd100k
from downstream.datasets import CocoDetectionDataset
from downstream.tasks import get_task
from downstream.voc import open_voc
from eval.bootstrap import resample_weights, resampled_metrics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/official_eval"
TOL = 1e-4


def _preds_by_image(rows: list[dict], image_ids: list[int], category_ids: list[int]) -> list[dict[str, Any]]:
    """COCO result rows → the task's per-image predictions (xyxy boxes, class indices), in ``image_ids`` order."""
    index = {c: k for k, c in enumerate(category_ids)}
    out = []
    for image_id in image_ids:
        mine = [r for r in rows if r["image_id"] == image_id]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)]
        out.append({"boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
                    "scores": torch.tensor([r["score"] for r in mine], dtype=torch.float64),
                    "classes": torch.tensor([index[r["category_id"]] for r in mine], dtype=torch.int64)})
    return out


def _bench_scores(task: str, ds: Any, rows: list[dict], image_stats: bool = False) -> tuple[dict, Any]:
    """Score ``rows`` as the bench's cells do: the task's dataset evaluator fed each image's prediction and target."""
    t = get_task(task)
    evaluator, ids = t.dataset_evaluator(ds, range(len(ds)))
    for i, pred in enumerate(_preds_by_image(rows, ids, ds.category_ids)):
        evaluator.update([pred], [ds.target(i)], [ids[i]])
    return evaluator.compute(image_stats=image_stats), evaluator


def _pycocotools(annotation_file: Path | dict, rows: list[dict], iou_type: str = "bbox") -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(annotation_file, dict):
            gt = COCO()
            gt.dataset = annotation_file
            gt.createIndex()
        else:
            gt = COCO(str(annotation_file))
        ev = COCOeval(gt, gt.loadRes(rows), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


# ---------------------------------------------------------------------------------------------------- COCO crowd
def coco_with_crowd(root: Path, seed: int = 0) -> tuple[Path, list[dict]]:
    """Images of 64×48 with objects, crowd regions (a tenth of the objects and large regions) and boxes touching
    the border; non-contiguous image and category ids; seeded predictions: jittered objects, detections inside the
    crowd regions, false positives. Returns the annotation file and the predictions (COCO result rows)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    w, h = 64, 48
    images, anns, rows = [], [], []
    cats = [{"id": 3, "name": "car"}, {"id": 7, "name": "person"}, {"id": 12, "name": "sign"}]
    for k in range(8):
        image_id = 1000 + 17 * k
        Image.new("RGB", (w, h), (k * 20, 50, 90)).save(root / "images" / f"im{k}.png")
        images.append({"id": image_id, "file_name": f"im{k}.png", "width": w, "height": h})
        for j in range(int(rng.integers(2, 7))):
            bw, bh = rng.uniform(6, 30), rng.uniform(6, 24)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            if j == 0:
                x = w - bw  # touches the right border
            cat = int(rng.choice([3, 7, 12]))
            crowd = int(rng.random() < 0.1 or j == 1 and k % 3 == 0)
            if crowd and j == 1:
                x, y, bw, bh = 0.0, 0.0, w / 2, h  # a large crowd region
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": crowd})
            for _ in range(int(rng.integers(1, 4 if crowd else 3))):
                jit = rng.normal(0, 0.15, 4) * [bw, bh, bw, bh]
                x1, y1 = max(x + jit[0], 0), max(y + jit[1], 0)
                x2, y2 = min(x + bw + jit[2], w), min(y + bh + jit[3], h)
                if x2 - x1 > 1 and y2 - y1 > 1:
                    rows.append({"image_id": image_id, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                 "score": float(rng.uniform(0.05, 1))})
        for _ in range(2):
            x1, y1 = rng.uniform(0, w - 8), rng.uniform(0, h - 8)
            rows.append({"image_id": image_id, "category_id": int(rng.choice([3, 7, 12])),
                         "bbox": [x1, y1, min(rng.uniform(4, 30), w - x1), min(rng.uniform(4, 20), h - y1)],
                         "score": float(rng.uniform(0.01, 0.7))})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path, rows


def test_coco_crowd_equals_pycocotools_on_the_annotation_file(tmp_path: Path) -> None:
    ann_file, rows = coco_with_crowd(tmp_path)
    ds = CocoDetectionDataset(tmp_path / "images", ann_file)
    ours, evaluator = _bench_scores("detection", ds, rows, image_stats=True)
    official = _pycocotools(ann_file, evaluator.results())  # the bench's rows load against the file's own ids
    assert ours["map"] == pytest.approx(official[0], abs=TOL)
    assert ours["map50"] == pytest.approx(official[1], abs=TOL)
    assert _pycocotools(evaluator.gt_dict(), evaluator.results())[0] == pytest.approx(ours["map"], abs=1e-12)
    # the bootstrap's statistics reproduce the numbers with every weight 1, crowd regions included
    again = resampled_metrics(ours["image_stats"], np.ones((1, len(ds))))
    assert again["map"][0] == pytest.approx(ours["map"], abs=1e-12)
    assert again["map50"][0] == pytest.approx(ours["map50"], abs=1e-12)
    # crowd regions matter here: scoring the targets alone (every crowd-region detection a false positive) differs
    naive = get_task("detection").evaluator(ds.names)
    for i, pred in enumerate(_preds_by_image(rows, ds.image_ids, ds.category_ids)):
        naive.update([pred], [ds.target(i)], [i])
    assert abs(naive.compute()["map"] - ours["map"]) > 0.01


def _resampled(gt: dict, rows: list[dict], counts: np.ndarray) -> tuple[dict, list[dict]]:
    """The COCO ground truth and result rows of a bootstrap resample, built explicitly: image k appears
    ``counts[k]`` times, each copy under a new image id with its annotations (crowd regions too) and detections."""
    images, anns, out_rows = [], [], []
    for k, image in enumerate(gt["images"]):
        for _ in range(int(counts[k])):
            new_id = len(images) + 1
            images.append({**image, "id": new_id})
            mine = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
            anns += [{**a, "id": len(anns) + j + 1, "image_id": new_id} for j, a in enumerate(mine)]
            out_rows += [{**r, "image_id": new_id} for r in rows if r["image_id"] == image["id"]]
    return {**gt, "images": images, "annotations": anns}, out_rows


def test_coco_crowd_bootstrap_resamples_equal_pycocotools_on_the_resampled_file(tmp_path: Path) -> None:
    """The bootstrap's weighted accumulation with crowd regions (whose ignore flags differ between IoU thresholds)
    equals pycocotools on each resample's images written out as copies."""
    ann_file, rows = coco_with_crowd(tmp_path, seed=2)
    ds = CocoDetectionDataset(tmp_path / "images", ann_file)
    ours, evaluator = _bench_scores("detection", ds, rows, image_stats=True)
    gt, results = evaluator.gt_dict(), evaluator.results()
    ids = [image["id"] for image in gt["images"]]
    weights = resample_weights(len(ds), 3, seed=4)
    got = resampled_metrics(ours["image_stats"], weights)
    for b, counts in enumerate(weights):
        by_position = dict(zip(ids, counts, strict=True))  # gt_dict's images are in the weights' (dataset) order
        resampled_gt, resampled_rows = _resampled(gt, results, np.array([by_position[i] for i in ids]))
        official = _pycocotools(resampled_gt, resampled_rows)
        assert got["map"][b] == pytest.approx(official[0], abs=1e-9)
        assert got["map50"][b] == pytest.approx(official[1], abs=1e-9)


def test_coco_crowd_equals_faster_coco_eval(tmp_path: Path) -> None:
    fce = pytest.importorskip("faster_coco_eval")
    ann_file, rows = coco_with_crowd(tmp_path, seed=1)
    ds = CocoDetectionDataset(tmp_path / "images", ann_file)
    ours, evaluator = _bench_scores("detection", ds, rows)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = fce.COCO(str(ann_file))
        ev = fce.COCOeval_faster(gt, gt.loadRes(evaluator.results()), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ours["map"] == pytest.approx(ev.stats[0], abs=TOL)
    assert ours["map50"] == pytest.approx(ev.stats[1], abs=TOL)


def test_instance_crowd_masks_equal_pycocotools_segm(tmp_path: Path) -> None:
    """Instance task: a crowd region given as RLE ignores the masks on it exactly as COCOeval ``segm`` does."""
    from pycocotools import mask as mask_utils

    from downstream.instance import CocoInstanceDataset

    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images/a.png")
    crowd = np.zeros((30, 40), np.uint8)
    crowd[:, 20:] = 1
    rle = mask_utils.encode(np.asfortranarray(crowd))
    anns = [{"id": 1, "image_id": 5, "category_id": 2, "bbox": [2, 2, 10, 10], "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]], "area": 100},
            {"id": 2, "image_id": 5, "category_id": 2, "bbox": [20, 0, 20, 30], "iscrowd": 1, "area": 600,
             "segmentation": {"size": [30, 40], "counts": rle["counts"].decode()}}]
    ann_file = tmp_path / "inst.json"
    ann_file.write_text(json.dumps({"images": [{"id": 5, "file_name": "a.png", "width": 40, "height": 30}],
                                    "annotations": anns, "categories": [{"id": 2, "name": "thing"}]}))
    ds = CocoInstanceDataset(tmp_path / "images", ann_file)
    hit, on_crowd = np.zeros((30, 40), bool), np.zeros((30, 40), bool)
    hit[2:12, 2:12], on_crowd[5:20, 22:35] = True, True
    pred = {"boxes": torch.tensor([[2.0, 2, 12, 12], [22.0, 5, 35, 20]]), "scores": torch.tensor([0.6, 0.9]),
            "classes": torch.tensor([0, 0]), "masks": torch.from_numpy(np.stack([hit, on_crowd]))}
    evaluator, ids = get_task("instance").dataset_evaluator(ds, range(1))
    evaluator.update([pred], [ds.target(0)], ids)
    ours = evaluator.compute()
    official = _pycocotools(ann_file, evaluator.results(), "segm")
    assert ours["mask_map"] == pytest.approx(official[0], abs=TOL) and ours["mask_map"] > 0.5
    assert ours["box_map"] == pytest.approx(_pycocotools(ann_file, evaluator.results())[0], abs=TOL)


# ---------------------------------------------------------------------------------------------------- BDD100K
def bdd_fixture(tmp_path: Path) -> Any:
    frames = json.loads((FIXTURES / "bdd/labels.json").read_text())
    images = tmp_path / "images"
    images.mkdir()
    for f in frames:
        Image.new("RGB", (1280, 720), (90, 90, 90)).save(images / f["name"])
    return open_bdd100k({"labels": str(FIXTURES / "bdd/labels.json"), "images": str(images)})


def test_bdd100k_equals_the_bdd100k_toolkit(tmp_path: Path) -> None:
    """The fixture: ignored categories (other person / vehicle, trailer), crowd labels, legacy names and boxes past
    the last pixel (x2 = 1279.9): scalabel's unclipped ``[x1, y1, x2 − x1 + 1, y2 − y1 + 1]`` is what is scored."""
    ds = bdd_fixture(tmp_path)
    rows = json.loads((FIXTURES / "bdd/predictions.json").read_text())
    official = json.loads((FIXTURES / "bdd/official.json").read_text())
    ours, _ = _bench_scores("detection", ds, rows, image_stats=True)
    assert ours["map"] == pytest.approx(official["AP"]["overall"], abs=TOL)
    assert ours["map50"] == pytest.approx(official["AP50"]["overall"], abs=TOL)
    assert ours["per_class"] == pytest.approx(official["AP"]["per_class"], abs=TOL, nan_ok=True)
    assert ours["per_class50"] == pytest.approx(official["AP50"]["per_class"], abs=TOL, nan_ok=True)
    again = resampled_metrics(ours["image_stats"], np.ones((1, len(ds))))
    assert again["map"][0] == pytest.approx(ours["map"], abs=1e-12)
    assert any(a["iscrowd"] for r in ds.records for a in r.annotations)
    assert any(a["bbox"][0] + a["bbox"][2] > 1280 for r in ds.records for a in r.annotations)


# ---------------------------------------------------------------------------------------------------- Pascal VOC
def voc_fixture(tmp_path: Path) -> Any:
    root = tmp_path / "VOC2007"
    shutil.copytree(FIXTURES / "voc/VOC2007", root)
    (root / "JPEGImages").mkdir()
    for xml in sorted((root / "Annotations").glob("*.xml")):
        size = ET.parse(xml).getroot().find("size")
        w, h = int(size.findtext("width")), int(size.findtext("height"))
        Image.new("RGB", (w, h), (30, 60, 90)).save(root / "JPEGImages" / f"{xml.stem}.jpg")
    return open_voc(str(root), "val")


def test_voc_ap_equals_the_devkit(tmp_path: Path) -> None:
    """VOC AP@.5 all-point and 11-point equal py-faster-rcnn's devkit port on the fixture (difficult objects,
    boxes on the first and last pixel); the bootstrap statistics reproduce them with weights 1."""
    ds = voc_fixture(tmp_path)
    rows = json.loads((FIXTURES / "voc/predictions.json").read_text())
    official = json.loads((FIXTURES / "voc/official.json").read_text())
    ours, evaluator = _bench_scores("detection", ds, rows, image_stats=True)
    assert ours["per_class_voc"] == pytest.approx(official["allpt"], abs=TOL)
    assert ours["per_class_voc07"] == pytest.approx(official["11pt"], abs=TOL)
    assert ours["voc_map50_allpt"] == pytest.approx(official["mean_allpt"], abs=TOL)
    assert ours["voc07_map50_11pt"] == pytest.approx(official["mean_11pt"], abs=TOL)
    assert ours["map"] == pytest.approx(_pycocotools(evaluator.gt_dict(), evaluator.results())[0], abs=1e-12)
    again = resampled_metrics(ours["image_stats"], np.ones((1, len(ds))))
    for key in ("map", "map50", "voc_map50_allpt", "voc07_map50_11pt"):
        assert again[key][0] == pytest.approx(ours[key], abs=1e-12), key
    assert any(a["iscrowd"] for r in ds.records for a in r.annotations)  # difficult objects are in the fixture


def test_voc_ap_rules_by_hand() -> None:
    """The devkit's rules on a case small enough to count: a detection on a difficult object is neither hit nor
    miss, a second detection of a taken object is a false positive, the highest-IoU object decides."""
    from downstream.metrics import voc_map

    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 0, 10, 10], "iscrowd": 1},
                          {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0}]}
    det = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # TP
           {"image_id": 1, "category_id": 1, "bbox": [20, 0, 10, 10], "score": 0.8},  # difficult: ignored
           {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.7},  # duplicate: FP
           {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.6}]  # TP
    out = voc_map(gt, det)
    # ranked: TP (p 1, r .5), FP (p .5), TP (p 2/3, r 1): all-point = .5·1 + .5·(2/3)
    assert out["voc_map50_allpt"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert out["voc07_map50_11pt"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
