"""RainCityscapes as a rain source of a Cityscapes dataset: 36 renderings per frame with the real names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from downstream.datasets import DatasetError
from downstream.raincityscapes import match_raincityscapes, parse_name, spread_pattern
from downstream.tasks import load_task_dataset

GROUPS = [(0.01, 0.005, 0.01), (0.02, 0.01, 0.005), (0.03, 0.015, 0.002)]  # × patterns 1..12 = 36 per frame
FRAMES = ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019", "bochum/bochum_000000_000313"]


def raincityscapes_layout(root: Path, split: str = "val", h: int = 32, w: int = 64, patterns: int = 12,
                          authors_list_form: bool = False) -> Path:
    """A clean Cityscapes split (``leftImg8bit``, ``gtFine`` train ids) and its ``leftImg8bit_rain/{split}`` with
    3 groups × ``patterns`` renderings per frame, each a flat grey ``50 + 10·group + pattern`` (so a test can tell
    which file was read). Returns the rain split folder."""
    rng = np.random.default_rng(0)
    rain = root / "leftImg8bit_rain" / split
    for frame in FRAMES:
        city, stem = frame.split("/")
        for sub in ("leftImg8bit", "gtFine", "leftImg8bit_rain"):
            (root / sub / split / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        Image.fromarray(rng.choice([0, 13, 255], (h, w)).astype(np.uint8)).save(
            root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png")
        for g, (a, b, d) in enumerate(GROUPS):
            for k in range(1, patterns + 1):
                middle = "" if authors_list_form else "_leftImg8bit"
                Image.fromarray(np.full((h, w, 3), 50 + 10 * g + k, np.uint8)).save(
                    rain / city / f"{stem}{middle}_rain_alpha_{a}_beta_{b}_dropsize_{d}_pattern_{k}.png")
    return rain


def _grey(path: Path) -> int:
    return int(np.asarray(Image.open(path))[0, 0, 0])


@pytest.mark.parametrize("authors_list_form", [False, True])
def test_one_pattern_or_patterns_spread_over_frames(tmp_path: Path, authors_list_form: bool) -> None:
    rain = raincityscapes_layout(tmp_path, authors_list_form=authors_list_form)
    assert len(list(rain.rglob("*.png"))) == 36 * len(FRAMES)
    assert parse_name("aachen_000000_000019_leftImg8bit_rain_alpha_0.03_beta_0.015_dropsize_0.002_pattern_12.png") \
        == ("aachen_000000_000019", (0.03, 0.015, 0.002), 12)
    ds = load_task_dataset("segmentation", "cityscapes", tmp_path, "val")
    files = match_raincityscapes("rc", rain, {"alpha": 0.02, "beta": 0.01, "dropsize": 0.005, "pattern": 7}, ds, 3)
    assert [_grey(f) for f in files] == [50 + 10 + 7] * 3
    spread = match_raincityscapes("rc", rain, {"alpha": 0.03, "beta": 0.015, "dropsize": 0.002}, ds, 3)
    assert [_grey(f) - 70 for f in spread] == [spread_pattern(f, list(range(1, 13))) for f in FRAMES]
    assert len({spread_pattern(f"x/{i}", list(range(1, 13))) for i in range(200)}) == 12  # every pattern used


def test_missing_or_uneven_renderings_are_named(tmp_path: Path) -> None:
    rain = raincityscapes_layout(tmp_path, patterns=2)
    ds = load_task_dataset("segmentation", "cityscapes", tmp_path, "val")
    group = {"alpha": 0.01, "beta": 0.005, "dropsize": 0.01}
    with pytest.raises(DatasetError, match=r"3 without a RainCityscapes file .* and pattern 5: aachen/aachen_000000"):
        match_raincityscapes("rc", rain, {**group, "pattern": 5}, ds, 3)
    next(rain.glob("bochum/*alpha_0.01_*pattern_2.png")).unlink()
    with pytest.raises(DatasetError, match=r"frame bochum/bochum_000000_000313 has patterns \[1\]"):
        match_raincityscapes("rc", rain, group, ds, 3)
    with pytest.raises(ValueError, match="must give alpha, beta and dropsize"):
        match_raincityscapes("rc", rain, {"alpha": 0.01}, ds, 3)


def test_bench_rows_per_rain_setting(tmp_path: Path, cityscapes_segmenter: Path) -> None:
    """One rain source per (alpha, beta, dropsize) group: rows with PSNR/SSIM against the aligned clean frames."""
    from derain.config import load_config
    from eval.bench import BenchConfig, run_bench

    rain = raincityscapes_layout(tmp_path)
    sources = ", ".join(f"{{name: rc-a{a}, path: {rain}, raincityscapes: {{alpha: {a}, beta: {b}, dropsize: {d}}}}}"
                        for a, b, d in GROUPS)
    spec = (f"datasets=[{{name: cs, task: segmentation, format: cityscapes, path: {tmp_path}, "
            f"model: {cityscapes_segmenter}, rainy: [{sources}]}}]")
    cfg = load_config(BenchConfig, None, [f"out={tmp_path / 'run'}", "device=cpu", "severities=[]", "samples=0",
                                          "bootstrap=0", spec, "derainers=[{name: identity, model: identity}]"])
    run = run_bench(cfg, progress=False)
    res = pd.read_csv(run / "results.csv")
    assert set(res.severity) >= {"none", "rc-a0.01", "rc-a0.02", "rc-a0.03"}
    psnr = res[(res.metric == "psnr_y") & (res.method == "rainy")].set_index("severity").value
    assert psnr["rc-a0.01"] != psnr["rc-a0.03"] and {"miou", "ssim_y"} <= set(res.metric)
    # per_image.csv names the RainCityscapes file (so its pattern) each frame was scored on; clean rows have none
    per_image = pd.read_csv(run / "per_image.csv", dtype=str, keep_default_na=False)
    assert list(per_image.columns) == ["dataset", "task", "task_model", "severity", "method", "seed", "image",
                                       "rain_file", "psnr_y", "ssim_y"]
    assert (per_image[per_image.severity == "none"].rain_file == "").all()
    for (a, b, d), sev in zip(GROUPS, ["rc-a0.01", "rc-a0.02", "rc-a0.03"], strict=True):
        rows = per_image[per_image.severity == sev]
        assert len(rows) == 2 * len(FRAMES)  # rainy and identity
        for image, rain_file in zip(rows.image, rows.rain_file, strict=True):
            frame = next(f for f in FRAMES if f.endswith(image.removesuffix("_leftImg8bit.png")))
            k = spread_pattern(frame, list(range(1, 13)))
            assert rain_file == f"{Path(frame).name}_leftImg8bit_rain_alpha_{a}_beta_{b}_dropsize_{d}_pattern_{k}.png"


@pytest.mark.parametrize("twin", ["list_form", "zero_padded"])
def test_two_files_for_one_frame_setting_and_pattern_are_refused(tmp_path: Path, twin: str) -> None:
    """Both file-name forms, or 0.01 and 0.010, of one rendering: whichever sorted last was read (issue 27 item 9)."""
    rain = raincityscapes_layout(tmp_path, patterns=1)
    ds = load_task_dataset("segmentation", "cityscapes", tmp_path, "val")
    original = rain / "aachen" / ("aachen_000000_000019_leftImg8bit_rain_alpha_0.01_beta_0.005_dropsize_0.01_"
                                  "pattern_1.png")
    other = original.name.replace("_leftImg8bit_rain", "_rain") if twin == "list_form" else \
        original.name.replace("alpha_0.01_", "alpha_0.010_")
    Image.open(original).save(original.with_name(other))
    with pytest.raises(DatasetError, match=rf"aachen/aachen_000000_000019 has two files of .* pattern 1: .*{other}"):
        match_raincityscapes("rc", rain, {"alpha": 0.01, "beta": 0.005, "dropsize": 0.01}, ds, 3)


def test_raincityscapes_settings_that_cannot_be_read_name_the_key(tmp_path: Path) -> None:
    rain = raincityscapes_layout(tmp_path, patterns=1)
    ds = load_task_dataset("segmentation", "cityscapes", tmp_path, "val")
    with pytest.raises(ValueError, match=r"rain source 'rc': raincityscapes\.alpha must be a number, got 'abc'"):
        match_raincityscapes("rc", rain, {"alpha": "abc", "beta": 0.005, "dropsize": 0.01}, ds, 3)
    with pytest.raises(DatasetError, match=r"settings in it are: alpha 0\.01, beta 0\.005, dropsize 0\.01; alpha "
                                           r"0\.02, beta 0\.01, dropsize 0\.005; alpha 0\.03"):
        match_raincityscapes("rc", rain, {"alpha": 0.05, "beta": 0.005, "dropsize": 0.01}, ds, 3)
    with pytest.raises(DatasetError, match=rf"point it at the split folder {rain}"):
        match_raincityscapes("rc", rain.parent, {"alpha": 0.01, "beta": 0.005, "dropsize": 0.01}, ds, 3)


def test_split_in_a_rain_source_path_is_replaced(tmp_path: Path) -> None:
    """bench --help writes path: .../leftImg8bit_rain/{split}; the dataset's split replaces it."""
    from eval.bench_config import RainSource
    from eval.rain_sources import match_rain_source

    rain = raincityscapes_layout(tmp_path, patterns=1)
    ds = load_task_dataset("segmentation", "cityscapes", tmp_path, "val")
    source = RainSource("rc", str(rain.parent / "{split}"), {"alpha": 0.01, "beta": 0.005, "dropsize": 0.01})
    assert [p.parent.parent for p in match_rain_source(source, ds, 3, split="val")] == [rain] * 3
