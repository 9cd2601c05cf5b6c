"""Cityscapes as distributed (format: cityscapes): tiny generated files with the real names and folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from downstream.cityscapes import LABELS, TRAIN_NAMES, label_ids_to_train_ids, open_cityscapes
from downstream.datasets import DatasetError
from downstream.tasks import load_task_dataset

# cityscapesScripts helpers/labels.py (HEAD 0bcc4a7), typed out again: label id -> train id of the 19 evaluated
# classes; every id not listed (0-6, 9, 10, 14-16, 18, 29, 30) has train id 255
OFFICIAL = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
OFFICIAL_NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                  "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                  "bicycle"]
FRAMES = {"frankfurt": ["frankfurt_000000_000294", "frankfurt_000001_005410"], "lindau": ["lindau_000000_000019"]}


def cityscapes_layout(root: Path, split: str = "val", h: int = 32, w: int = 64, seed: int = 0,
                      train_ids_for: tuple[str, ...] = ("lindau",)) -> dict[str, np.ndarray]:
    """``leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` and ``gtFine/{split}/{city}/{stem}_gtFine_labelIds.png``
    (random label ids 0..33 in 8-px blocks, as ``_gtFine_color``/``_polygons.json`` beside them are in the zip);
    the cities in ``train_ids_for`` also get ``_gtFine_labelTrainIds.png``. Returns the expected train ids by
    relative image path."""
    rng = np.random.default_rng(seed)
    expected = {}
    for city, stems in FRAMES.items():
        for sub in ("leftImg8bit", "gtFine"):
            (root / sub / split / city).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            ids = np.kron(rng.integers(0, 34, size=(h // 8, w // 8)), np.ones((8, 8), np.int64)).astype(np.uint8)
            train = np.array([OFFICIAL.get(int(v), 255) for v in ids.reshape(-1)], np.uint8).reshape(h, w)
            colour = (ids[..., None] * np.array([7, 3, 5]) % 256).astype(np.uint8)
            Image.fromarray(colour + rng.integers(0, 20, size=(h, w, 3), dtype=np.uint8)).save(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            gt = root / "gtFine" / split / city
            Image.fromarray(ids).save(gt / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(ids).save(gt / f"{stem}_gtFine_instanceIds.png")
            Image.fromarray(colour).save(gt / f"{stem}_gtFine_color.png")
            (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
            if city in train_ids_for:
                Image.fromarray(train).save(gt / f"{stem}_gtFine_labelTrainIds.png")
            expected[f"{city}/{stem}_leftImg8bit.png"] = train.astype(np.int64)
    return expected


def test_label_table_is_the_official_one() -> None:
    assert len(LABELS) == 34 and [i for _, i, _ in LABELS] == list(range(34))
    assert {i: t for _, i, t in LABELS if t != 255} == OFFICIAL
    assert list(TRAIN_NAMES) == OFFICIAL_NAMES
    ids = np.arange(34).reshape(2, 17)
    np.testing.assert_array_equal(label_ids_to_train_ids(ids).reshape(-1), [OFFICIAL.get(i, 255) for i in range(34)])
    with pytest.raises(DatasetError, match=r"x\.png: values \[34\] are not Cityscapes label ids"):
        label_ids_to_train_ids(np.array([[0, 34]]), "x.png")


def test_reads_the_distributed_layout(tmp_path: Path) -> None:
    expected = cityscapes_layout(tmp_path)
    ds = load_task_dataset("segmentation", "cityscapes", tmp_path, "val")
    assert ds.names == OFFICIAL_NAMES and len(ds) == 3
    assert ds.images_dir == tmp_path / "leftImg8bit/val"
    for i in range(len(ds)):
        rel = ds.image_path(i).relative_to(ds.images_dir).as_posix()
        image, mask = ds[i]
        assert image.shape == (32, 64, 3) and image.dtype == np.float32 and mask.dtype == np.int64
        np.testing.assert_array_equal(mask, expected[rel])
        used = "labelTrainIds" if rel.startswith("lindau") else "labelIds"
        assert ds.mask_path(i).name.endswith(f"_gtFine_{used}.png")
    same = open_cityscapes({"images": str(tmp_path / "leftImg8bit/{split}"), "gt": str(tmp_path / "gtFine/{split}")})
    assert [same.mask_path(i) for i in range(3)] == [ds.mask_path(i) for i in range(3)]


def test_incomplete_layouts_name_the_file(tmp_path: Path) -> None:
    cityscapes_layout(tmp_path)
    gt = tmp_path / "gtFine/val/frankfurt"
    with pytest.raises(DatasetError, match=r"Cityscapes images .* folder not found: .*leftImg8bit/test"):
        open_cityscapes(tmp_path, "test")
    (tmp_path / "leftImg8bit/test").mkdir()
    with pytest.raises(DatasetError, match=r"Cityscapes ground truth .* folder not found: .*gtFine/test"):
        open_cityscapes(tmp_path, "test")
    extra = gt / "frankfurt_000000_000576_gtFine_labelIds.png"
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(extra)
    with pytest.raises(DatasetError, match=f"ground truth without its image: {extra}"):
        open_cityscapes(tmp_path)
    extra.unlink()
    bad = gt / "frankfurt_000001_005410_gtFine_labelIds.png"
    Image.fromarray(np.full((32, 64), 40, np.uint8)).save(bad)
    with pytest.raises(DatasetError, match=rf"{bad}: values \[40\] are not Cityscapes label ids"):
        open_cityscapes(tmp_path)
    bad.unlink()
    with pytest.raises(DatasetError, match=r"ground truth not found for .*frankfurt_000001_005410_leftImg8bit\.png"):
        open_cityscapes(tmp_path)


def test_ignored_ground_truth_is_neither_hit_nor_false_positive() -> None:
    """The official evaluator skips pixels whose ground truth is ignored: predicting a class there changes nothing."""
    from downstream.metrics import SegmentationEvaluator

    target = label_ids_to_train_ids(np.array([[7, 7, 0, 0], [26, 26, 4, 9]]))  # road road void void / car car ...
    pred = np.array([[0, 0, 0, 13], [13, 0, 13, 13]])  # guesses on the ignored pixels must not count
    ev = SegmentationEvaluator(OFFICIAL_NAMES)
    ev.update([pred], [target], [0])
    out = ev.compute()
    assert out["iou_per_class"]["road"] == pytest.approx(2 / 3)  # 2 TP, 1 FP (a car pixel), no FP from void
    assert out["iou_per_class"]["car"] == pytest.approx(1 / 2)  # 1 TP, 1 FN
    assert np.isnan(out["iou_per_class"]["sky"]) and out["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_bench_and_report_over_the_cityscapes_layout(tmp_path: Path, cityscapes_segmenter: Path) -> None:
    from derain.config import load_config
    from derain.synth import synthesize_folder
    from eval.bench import BenchConfig, run_bench
    from reports.build import build_report

    data = tmp_path / "cityscapes"
    cityscapes_layout(data)
    model = cityscapes_segmenter
    synthesize_folder(data / "leftImg8bit/val", tmp_path / "rainy", preset="heavy", seed=0, progress=False)
    spec = (f"datasets=[{{name: cs, task: segmentation, format: cityscapes, path: {data}, model: {model}, "
            f"rainy: [{{name: ext, path: {tmp_path / 'rainy'}}}]}}]")
    cfg = load_config(BenchConfig, None, [f"out={tmp_path / 'run'}", "device=cpu", "severities=[light]", "samples=1",
                                          spec, "derainers=[{name: identity, model: identity}]", "bootstrap=0"])
    run = run_bench(cfg, progress=False)
    res = pd.read_csv(run / "results.csv")
    assert {"none", "light", "ext"} <= set(res.severity) and {"miou", "pixel_acc", "psnr_y"} <= set(res.metric)
    per_class = pd.read_csv(run / "per_class.csv")
    assert set(per_class["class"]) <= set(OFFICIAL_NAMES) and "car" in set(per_class["class"])
    report = build_report([run], tmp_path / "report", formats="md")
    md = report.markdown.read_text()
    assert "Segmentation" in md and "cs" in md


def test_train_task_reads_the_cityscapes_layout(tmp_path: Path, one_thread: None) -> None:
    from derain.config import ConfigError
    from downstream.train_task import TaskTrainConfig, train_task

    cityscapes_layout(tmp_path / "cs", split="train")
    cityscapes_layout(tmp_path / "cs", split="val", seed=1)
    cfg = TaskTrainConfig(task="segmentation", format="cityscapes", data=str(tmp_path / "cs"),
                          out=str(tmp_path / "run"), device="cpu", batch=2,
                          recipe={"iters": 2, "crop": 32})
    best = train_task(cfg, progress=False)
    assert (best / "segmenter.json").is_file() and "road" in (best / "segmenter.json").read_text()
    with pytest.raises(ConfigError, match="format 'bdd' is not for segmentation"):
        train_task(TaskTrainConfig(task="segmentation", format="bdd", data=str(tmp_path / "cs")), progress=False)


def test_joint_tunes_a_derainer_on_the_cityscapes_layout(tmp_path: Path, cityscapes_segmenter: Path) -> None:
    import json

    from derain.config import load_config
    from downstream.joint import JointConfig, JointTrainer

    cityscapes_layout(tmp_path / "cs", split="train")
    cityscapes_layout(tmp_path / "cs", split="val", seed=1)
    cfg = load_config(JointConfig, None, [
        "derainer.name=mspfn-lite", "derainer.options.channels=8", "derainer.options.cfm_channels=4",
        "derainer.options.lstm_channels=[4,8,8]", "derainer.options.units=1", "task=segmentation",
        "data.format=cityscapes", f"data.path={tmp_path / 'cs'}", f"task_model={cityscapes_segmenter}",
        f"out={tmp_path / 'run'}", "device=cpu", "batch_size=2", "iters=2", "weights.task=1", "presets=[heavy]",
        "name=cs", "val_limit=1"])
    result = JointTrainer(cfg, progress=False).run()
    assert result.step == 2
    assert json.loads((tmp_path / "run/cs/summary.json").read_text())["metric"] == "miou"
