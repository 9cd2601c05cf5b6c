"""BDD100K detection as distributed (format: bdd100k): a tiny det_20 JSON and JPEGs with the real names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from downstream.bdd100k import CLASSES, open_bdd100k
from downstream.datasets import DatasetError, to_coco_dict
from downstream.metrics import coco_map
from downstream.tasks import load_task_dataset


def _frame(name: str, weather: str, labels: list[dict[str, Any]], timeofday: str = "daytime") -> dict[str, Any]:
    return {"name": name, "attributes": {"weather": weather, "scene": "city street", "timeofday": timeofday},
            "timestamp": 10000, "labels": labels}


def _box(category: str, x1: float, y1: float, x2: float, y2: float, **attributes: Any) -> dict[str, Any]:
    return {"id": "1", "category": category, "attributes": {"occluded": False, "truncated": False, **attributes},
            "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}


def bdd100k_layout(root: Path, split: str = "val", size: tuple[int, int] = (64, 36)) -> dict[str, Any]:
    """``images/100k/{split}/*.jpg`` and ``labels/det_20/det_{split}.json`` (two rainy frames, two clear, one
    overcast night); returns the bench ``path`` mapping."""
    frames = [
        _frame("b1c66a42-6f7d68ca.jpg", "rainy", [_box("car", 10, 8, 29, 23), _box("pedestrian", 40, 5, 47, 30),
                                                   _box("trailer", 0, 0, 5, 5)]),
        _frame("b1c81faa-3df17267.jpg", "rainy", [_box("traffic sign", 50, 2, 53, 9), _box("car", 2, 20, 20, 34,
                                                                                           crowd=True)]),
        _frame("b1ca2e5d-84cf9134.jpg", "clear", [_box("truck", 5, 5, 40, 30),
                                                   {"id": "9", "category": "lane", "poly2d": [{"vertices": [[0, 0],
                                                                                                           [9, 9]]}]}]),
        _frame("b1cac6a7-04e33135.jpg", "clear", []),
        _frame("b1d0091f-75824d0d.jpg", "overcast", [_box("bus", 1, 1, 30, 30)], timeofday="night"),
    ]
    images = root / "bdd100k/images/100k" / split
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for frame in frames:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(images / frame["name"],
                                                                                          quality=90)
    labels = root / "bdd100k/labels/det_20"
    labels.mkdir(parents=True)
    (labels / f"det_{split}.json").write_text(json.dumps(frames))
    return {"labels": str(root / "bdd100k/labels/det_20/det_{split}.json"),
            "images": str(root / "bdd100k/images/100k/{split}")}


def test_reads_det_20_with_classes_ignored_categories_and_filters(tmp_path: Path) -> None:
    path = bdd100k_layout(tmp_path)
    ds = load_task_dataset("detection", "bdd100k", path, "val")
    assert ds.names == list(CLASSES) and ds.category_ids == list(range(1, 11)) and len(ds) == 5
    assert ds.image_path(0) == tmp_path / "bdd100k/images/100k/val/b1c66a42-6f7d68ca.jpg"
    image, target = ds[0]
    assert image.shape == (36, 64, 3)
    np.testing.assert_array_equal(target["classes"], [CLASSES.index("car"), CLASSES.index("pedestrian")])
    np.testing.assert_allclose(target["boxes"], [[10, 8, 30, 24], [40, 5, 48, 31]])  # inclusive corners + 1
    crowd = [[a for a in r.annotations if a["iscrowd"]] for r in ds.records]
    assert crowd[0][0]["category_id"] == CLASSES.index("truck") + 1  # trailer: an ignored truck
    assert crowd[1][0]["iscrowd"] == 1 and len(ds.target(1)["classes"]) == 1  # crowd car
    assert len(ds.target(2)["classes"]) == 1  # the lane (poly2d) is no box
    rainy = open_bdd100k({**path, "where": {"weather": "rainy"}})
    assert [ds_.name for ds_ in map(rainy.image_path, range(len(rainy)))] == ["b1c66a42-6f7d68ca.jpg",
                                                                            "b1c81faa-3df17267.jpg"]
    assert rainy.image_ids == [1, 2]
    dry = open_bdd100k({**path, "where": {"weather": ["clear", "overcast"], "timeofday": "daytime"}})
    assert dry.image_ids == [3, 4]


def test_legacy_names_are_mapped(tmp_path: Path) -> None:
    path = bdd100k_layout(tmp_path)
    labels = Path(path["labels"].replace("{split}", "val"))
    frames = json.loads(labels.read_text())
    frames[0]["labels"] = [_box(c, 1, 1, 9, 9) for c in ("person", "bike", "motor", "van", "caravan")]
    labels.write_text(json.dumps(frames))
    names = [CLASSES[c] for c in open_bdd100k(path).target(0)["classes"]]
    assert names == ["pedestrian", "bicycle", "motorcycle", "car", "car"]


def test_inclusive_box2d_scores_like_the_official_coco_conversion(tmp_path: Path) -> None:
    """The COCO ground truth we score equals scalabel's box2d_to_bbox ([x1, y1, x2 - x1 + 1, y2 - y1 + 1], typed out
    here); on the 4 px wide traffic sign a prediction read with exclusive corners (3 px) loses AP at IoU >= .8."""
    path = bdd100k_layout(tmp_path)
    ds = open_bdd100k({**path, "where": {"weather": "rainy"}})
    gt = to_coco_dict(ds)
    frames = json.loads(Path(path["labels"].replace("{split}", "val")).read_text())
    sign = frames[1]["labels"][0]["box2d"]
    official = [sign["x1"], sign["y1"], sign["x2"] - sign["x1"] + 1, sign["y2"] - sign["y1"] + 1]
    ours = [a for a in gt["annotations"] if a["image_id"] == 2 and a["iscrowd"] == 0]
    assert ours[0]["bbox"] == official and ours[0]["category_id"] == 10
    assert [a["bbox"] for a in gt["annotations"] if a["iscrowd"]] == [[0, 0, 6, 6], [2, 20, 19, 15]]

    def score(box: list[float]) -> float:
        rows = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                for a in gt["annotations"] if not a["iscrowd"] and a["image_id"] == 1]
        rows.append({"image_id": 2, "category_id": 10, "bbox": box, "score": 0.9})
        return coco_map(gt, rows)["per_class"]["traffic sign"]

    assert score(official) == pytest.approx(1.0)
    exclusive = [sign["x1"], sign["y1"], sign["x2"] - sign["x1"], sign["y2"] - sign["y1"]]
    assert score(exclusive) < 0.9


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    path = bdd100k_layout(tmp_path)
    labels = Path(path["labels"].replace("{split}", "val"))
    with pytest.raises(DatasetError, match="where: unknown frame attribute 'rain'"):
        open_bdd100k({**path, "where": {"rain": True}})
    with pytest.raises(DatasetError, match=r"where: weather \['rain'\] not among rainy"):
        open_bdd100k({**path, "where": {"weather": "rain"}})
    with pytest.raises(DatasetError, match="the dataset has no images"):
        open_bdd100k({**path, "where": {"weather": "foggy"}})
    with pytest.raises(ValueError, match="unknown path keys"):
        open_bdd100k({**path, "filter": {"weather": "rainy"}})
    frames = json.loads(labels.read_text())
    frames[2]["labels"].append(_box("horse", 1, 1, 5, 5))
    labels.write_text(json.dumps(frames))
    with pytest.raises(DatasetError, match=rf"{labels}: frame 'b1ca2e5d-84cf9134.jpg' label #2: unknown category "
                                           "'horse'"):
        open_bdd100k(path)
    (tmp_path / "bdd100k/images/100k/val/b1c66a42-6f7d68ca.jpg").unlink()
    with pytest.raises(DatasetError, match=r"image 'b1c66a42-6f7d68ca.jpg' not found"):
        open_bdd100k({**path, "where": {"weather": "rainy"}})
    with pytest.raises(DatasetError, match="BDD100K label file not found: .*det_train.json"):
        open_bdd100k(path, "train")


def test_bench_scores_rainy_frames_as_real_rain_next_to_clear_ones(tmp_path: Path) -> None:
    from derain.config import load_config
    from eval.bench import BenchConfig, run_bench
    from reports.build import build_report

    path = bdd100k_layout(tmp_path, size=(64, 64))
    spec = json.dumps(path)[1:-1]
    datasets = (f"datasets=[{{name: bdd-clear, task: detection, format: bdd100k, path: {{{spec}, where: {{weather: "
                f"clear}}}}, model: yolo11n.yaml, imgsz: 64}}, {{name: bdd-rainy, task: detection, format: bdd100k, "
                f"path: {{{spec}, where: {{weather: rainy}}}}, model: yolo11n.yaml, imgsz: 64, real_rain: rainy}}]")
    cfg = load_config(BenchConfig, None, [f"out={tmp_path / 'run'}", "device=cpu", "severities=[light]", "samples=0",
                                          datasets, "derainers=[{name: identity, model: identity}]", "bootstrap=0"])
    run = run_bench(cfg, progress=False)
    res = pd.read_csv(run / "results.csv")
    clear, rainy = res[res.dataset == "bdd-clear"], res[res.dataset == "bdd-rainy"]
    assert set(clear.severity) >= {"none", "light"} and set(rainy.severity) == {"rainy"}
    assert {"map", "map50"} <= set(rainy.metric) and not {"psnr_y", "ssim_y"} & set(rainy.metric)
    md = build_report([run], tmp_path / "report", formats="md").markdown.read_text()
    assert "bdd-rainy" in md and "bdd-clear" in md


def test_train_task_trains_a_detector_on_the_bdd100k_layout(tmp_path: Path, one_thread: None) -> None:
    """train-task opens the splits as bench does and trains through a YOLO view (image links, label files)."""
    from downstream.datasets import YoloDetectionDataset
    from downstream.train_task import TaskTrainConfig, train_task

    path = bdd100k_layout(tmp_path, split="train", size=(64, 64))
    cfg = TaskTrainConfig(task="detection", format="bdd100k", data=path, out=str(tmp_path / "run"), device="cpu",
                          batch=4, recipe={"epochs": 1, "imgsz": 64, "yolo": {"warmup_epochs": 0, "mosaic": 0}})
    best = train_task(cfg, progress=False)
    assert best.is_file()
    view = YoloDetectionDataset(tmp_path / "run/data/data.yaml", "train")  # train doubles as val (no det_val.json)
    bdd = open_bdd100k(path, "train")
    assert view.names == bdd.names and len(view) == len(bdd)
    for i in range(len(bdd)):
        np.testing.assert_allclose(view.target(i)["boxes"], bdd.target(i)["boxes"], atol=1e-3)
        np.testing.assert_array_equal(view.target(i)["classes"], bdd.target(i)["classes"])
