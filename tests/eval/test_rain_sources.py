"""Rain sources (`rainy: [{name, path}]`) given as the rained copy of the dataset root, as `derainbench synth
--with-labels DATA DATA-rainy` writes it, or of the image folder: both read the same files, in every format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derain.synth import synthesize_folder
from downstream.datasets import DatasetError
from downstream.tasks import load_task_dataset
from eval.bench import BenchConfig, RainSource, match_rain_source, run_bench


def _image(path: Path, seed: int, h: int = 32, w: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _mask(path: Path, value: int, h: int = 32, w: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint8)).save(path)


def _cityscapes(root: Path) -> tuple[str, Any, Path]:
    for k, (city, stem) in enumerate([("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")]):
        _image(root / f"leftImg8bit/val/{city}/{stem}_leftImg8bit.png", k)
        _mask(root / f"gtFine/val/{city}/{stem}_gtFine_labelTrainIds.png", 0)
    return "cityscapes", str(root), root / "leftImg8bit/val"


def _acdc(root: Path) -> tuple[str, Any, Path]:
    for k, n in enumerate(["000011", "000321"]):
        stem = f"GOPR0400/GOPR0400_frame_{n}"
        _image(root / f"rgb_anon/rain/val/{stem}_rgb_anon.png", k)
        _image(root / f"rgb_anon/rain/val_ref/{stem}_rgb_ref_anon.png", k + 9)  # rained too, never matched
        _mask(root / f"gt/rain/val/{stem}_gt_labelTrainIds.png", 0)
    return "acdc", str(root), root / "rgb_anon/rain/val"


def _bdd100k(root: Path) -> tuple[str, Any, Path]:
    names = ["b1c66a42-6f7d68ca.jpg", "b1c81faa-3df17267.jpg"]
    for k, name in enumerate(names):
        _image(root / "images/100k/val" / name, k)
    frames = [{"name": name, "attributes": {"weather": "rainy", "scene": "city street", "timeofday": "daytime"},
               "labels": [{"id": "1", "category": "car", "box2d": {"x1": 2, "y1": 2, "x2": 20, "y2": 20}}]}
              for name in names]
    (root / "labels/det_20").mkdir(parents=True)
    (root / "labels/det_20/det_val.json").write_text(json.dumps(frames))
    return "bdd100k", {"labels": str(root / "labels/det_20/det_{split}.json"),
                       "images": str(root / "images/100k/{split}")}, root / "images/100k/val"


def _voc(root: Path) -> tuple[str, Any, Path]:
    (root / "ImageSets/Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for k, image_id in enumerate(["000005", "000007"]):
        _image(root / f"JPEGImages/{image_id}.jpg", k)
        (root / f"Annotations/{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>64</width><height>32</height></size>"
            "<object><name>car</name><difficult>0</difficult><bndbox><xmin>3</xmin><ymin>3</ymin><xmax>20</xmax>"
            "<ymax>20</ymax></bndbox></object></annotation>")
    (root / "ImageSets/Main/val.txt").write_text("000005\n000007\n")
    return "voc", str(root), root / "JPEGImages"


LAYOUTS = {"cityscapes": ("segmentation", _cityscapes), "acdc": ("segmentation", _acdc),
           "bdd100k": ("detection", _bdd100k), "voc": ("detection", _voc)}


def _scenes(setup: dict, fmt: str) -> tuple[str, Any, Path, Path]:
    """(format, path, image folder, dataset root) of the tiny bench's generated scenes."""
    det = setup["root"] / "scenes/det"
    if fmt == "yolo":
        return fmt, str(det / "data.yaml"), det / "images/val", det
    if fmt == "coco":
        return fmt, {"images": str(det / "images/val"), "annotations": str(det / "annotations/instances_val.json")}, \
            det / "images/val", det
    seg = setup["root"] / "scenes/seg"
    return fmt, str(seg), seg / "val/images", seg


@pytest.mark.parametrize("fmt", ["yolo", "coco", "masks", "cityscapes", "acdc", "bdd100k", "voc"])
def test_a_rained_root_copy_matches_like_its_image_folder(tiny_bench: dict, tmp_path: Path, fmt: str) -> None:
    if fmt in LAYOUTS:
        task, build = LAYOUTS[fmt]
        data = tmp_path / "data"
        fmt, path, images = build(data)
    else:
        task = "segmentation" if fmt == "masks" else "detection"
        fmt, path, images, data = _scenes(tiny_bench, fmt)
    rainy = tmp_path / "data-rainy"
    synthesize_folder(data, rainy, preset="light", seed=0, progress=False, with_labels=True)
    dataset = load_task_dataset(task, fmt, path, "val")
    n = len(dataset)
    by_root = match_rain_source(RainSource("ps", str(rainy)), dataset, n)
    by_folder = match_rain_source(RainSource("ps", str(rainy / images.relative_to(data))), dataset, n)
    assert by_root == by_folder and len(by_root) == n
    assert all(p.is_relative_to(rainy) and p.is_file() for p in by_root)
    with pytest.raises(DatasetError, match="own image folder") as err:  # DATA instead of DATA-rainy
        match_rain_source(RainSource("ps", str(data)), dataset, n)
    assert "\n" not in str(err.value)


def test_ambiguous_empty_and_unmatched_sources_are_one_line_errors(tiny_bench: dict, tmp_path: Path) -> None:
    fmt, path, images, data = _scenes(tiny_bench, "yolo")
    rainy = tmp_path / "det-rainy"
    synthesize_folder(data, rainy, preset="light", seed=0, progress=False, with_labels=True)
    dataset = load_task_dataset("detection", fmt, path, "val")
    n = len(dataset)
    for f in (rainy / "images/val").iterdir():  # a second copy of the image folder at the top of the root copy
        shutil.copy(f, rainy / f.name)
    with pytest.raises(DatasetError, match="ambiguous") as err:
        match_rain_source(RainSource("ps", str(rainy)), dataset, n)
    assert "\n" not in str(err.value)
    assert f"in {rainy} and in {rainy / 'images/val'}" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"none of the \d+ has a rainy file.*holds no image files") as err:
        match_rain_source(RainSource("ps", str(tmp_path / "empty")), dataset, n)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="none of the") as err:  # images, but of another dataset
        match_rain_source(RainSource("ps", str(rainy / "images/train")), dataset, n)
    assert "\n" not in str(err.value)
    victim = sorted((rainy / "images/val").glob("*.png"))[0]  # a root copy missing one image lists it, as before
    shutil.rmtree(rainy)
    synthesize_folder(data, rainy, preset="light", seed=0, progress=False, with_labels=True)
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"the copy of it in {rainy / 'images/val'}.*1 without a rainy file.*"
                                           rf"{victim.stem}"):
        match_rain_source(RainSource("ps", str(rainy)), dataset, n)


def test_a_bench_over_a_root_copy_gives_the_numbers_of_its_image_folder(tiny_bench: dict, tmp_path: Path) -> None:
    """`derainbench synth --with-labels` of a YOLO root and a masks root; each benched with `rainy: DATA-rainy` and
    with `rainy: DATA-rainy/<image folder>`: every row of the two sources is the same."""
    from derain.config import load_config

    root = tiny_bench["root"]
    for name in ("det", "seg"):
        synthesize_folder(root / "scenes" / name, tmp_path / f"{name}-rainy", preset="heavy", seed=0,
                          progress=False, with_labels=True)

    def sources(name: str, images: str) -> str:
        return (f"rainy: [{{name: root, path: {tmp_path / f'{name}-rainy'}}}, "
                f"{{name: folder, path: {tmp_path / f'{name}-rainy' / images}}}]")

    datasets = (f"datasets=[{{name: det, task: detection, format: yolo, path: {root}/scenes/det/data.yaml, "
                f"model: yolo11n.yaml, imgsz: 64, {sources('det', 'images/val')}}}, {{name: seg, task: segmentation, "
                f"format: masks, path: {root}/scenes/seg, model: {root}/seg-model, {sources('seg', 'val/images')}}}]")
    cfg = load_config(BenchConfig, None, [f"out={tmp_path / 'run'}", "device=cpu", "severities=[]", "samples=0",
                                          "bootstrap=0", datasets, "derainers=[{name: identity, model: identity}]"])
    run = run_bench(cfg, progress=False)
    res = pd.read_csv(run / "results.csv")
    by = res.set_index(["dataset", "severity", "method", "metric"]).value
    per_image = pd.read_csv(run / "per_image.csv", dtype=str, keep_default_na=False)
    source_rows = per_image[per_image.severity != "none"]
    assert len(source_rows) and (per_image[per_image.severity == "none"].rain_file == "").all()
    assert [Path(f).stem for f in source_rows.rain_file] == [Path(f).stem for f in source_rows.image]  # by name
    keys = [k for k in by.index if k[1] == "root"]
    assert {k[0] for k in keys} == {"det", "seg"} and {"map", "miou", "psnr_y"} <= {k[3] for k in keys}
    for ds, _, method, metric in keys:
        np.testing.assert_equal(by[(ds, "folder", method, metric)], by[(ds, "root", method, metric)])  # NaN == NaN
    for ds in ("det", "seg"):
        assert 5 < by[(ds, "root", "rainy", "psnr_y")] < 40  # rainy images were read, not the clean ones


def test_per_image_csv_without_rain_sources_keeps_its_columns(tiny_bench_run: Path) -> None:
    """``rain_file`` (the rainy file a rain source's row was scored on) only where a dataset has rain sources."""
    header = (tiny_bench_run / "per_image.csv").read_text().splitlines()[0]
    assert header == "dataset,task,task_model,severity,method,seed,image,psnr_y,ssim_y"
def _coco_with(root: Path, names: list[str]) -> Any:
    for k, name in enumerate(names):
        _image(root / "images" / name, k)
    data = {"images": [{"id": k + 1, "file_name": n} for k, n in enumerate(names)], "annotations": [],
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "ann.json").write_text(json.dumps(data))
    return load_task_dataset("detection", "coco", {"images": str(root / "images"), "annotations": str(root /
                                                                                                     "ann.json")})


def test_two_images_of_one_stem_are_not_paired_with_one_rainy_file(tmp_path: Path) -> None:
    """x.jpg and x.png would both be scored on the rainy x.png (issue 27 item 5)."""
    dataset = _coco_with(tmp_path / "data", ["x.jpg", "x.png", "y.png"])
    for name in ("x.png", "y.png"):
        _image(tmp_path / "rainy" / name, 7)
    with pytest.raises(DatasetError, match=r"x\.jpg and x\.png .* one rainy file"):
        match_rain_source(RainSource("ps", str(tmp_path / "rainy")), dataset, 3)


def test_a_rain_source_of_clean_copies_is_refused(tmp_path: Path) -> None:
    """A byte-identical copy of the clean images (cp -r DATA DATA-rainy) was scored as rain (issue 27 item 16)."""
    from eval.bench_config import DatasetSpec
    from eval.fingerprints import open_dataset

    _coco_with(tmp_path / "data", ["x.png", "y.png"])
    shutil.copytree(tmp_path / "data" / "images", tmp_path / "copy")
    spec = DatasetSpec("c", "detection", "coco", {"images": str(tmp_path / "data" / "images"),
                                                  "annotations": str(tmp_path / "data" / "ann.json")}, "yolo11n.yaml",
                       rainy=[RainSource("copy", str(tmp_path / "copy"))])
    with pytest.raises(ValueError, match=r"rain source 'copy'.*all 2 .*byte-identical to the clean images"):
        open_dataset(spec, {})
    _image(tmp_path / "copy" / "y.png", 9)
    with pytest.warns(UserWarning, match=r"rain source 'copy'.*1 of its 2 files .*byte-identical.*x\.png"):
        open_dataset(spec, {})


def test_bdd100k_rainy_frames_without_real_rain_are_refused() -> None:
    """where: {weather: rainy} without real_rain scored real rain as 'clean' with synthetic rain on top."""
    from eval.bench_config import BenchConfig, DatasetSpec, validate

    path = {"labels": "l.json", "images": "i", "where": {"weather": ["rainy", "clear"]}}
    cfg = BenchConfig(datasets=[DatasetSpec("b", "detection", "bdd100k", path, "yolo11n.yaml")])
    with pytest.raises(ValueError, match=r"dataset 'b': where selects rainy frames.*real_rain"):
        validate(cfg)
    cfg.datasets[0].path["where"] = {"weather": "clear"}
    validate(cfg)
