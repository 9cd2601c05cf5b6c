"""A tiny end-to-end benchmark run: generated scenes, tiny task models, identity + mspfn-lite derainers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from derain import build_model
from derain.checkpoint import save_checkpoint
from derain.config import load_config
from downstream.scenes import generate_scenes
from downstream.segmentation import SegmenterConfig, build_segmenter, save_segmenter
from eval.bench import BenchConfig, run_bench


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("bench")
    info = generate_scenes(root / "scenes", n=8, size=64, seed=0, progress=False)
    seg_classes = (root / "scenes/seg/classes.txt").read_text().split()
    seg = build_segmenter(SegmenterConfig(arch="Unet", encoder="resnet18", num_classes=len(seg_classes),
                                          classes=seg_classes, encoder_depth=3, decoder_channels=[16, 8, 8]))
    save_segmenter(seg, root / "seg-model")
    save_checkpoint(root / "lite", build_model("mspfn-lite", units=1), name="mspfn-lite", config={"units": 1})
    return {"root": root, "info": info}


def bench_config(setup: dict, out: Path, *extra: str) -> BenchConfig:
    root = setup["root"]
    args = [
        f"out={out}", "device=cpu", "severities=[light, heavy]", "samples=1",
        f"datasets=[{{name: det, task: detection, format: yolo, path: {root}/scenes/det/data.yaml, "
        f"model: yolo11n.yaml, imgsz: 64}}, {{name: seg, task: segmentation, format: masks, "
        f"path: {root}/scenes/seg, model: {root}/seg-model}}]",
        f"derainers=[{{name: identity, model: identity}}, {{name: lite, model: {root}/lite}}]",
        *extra,
    ]
    return load_config(BenchConfig, None, args)


def test_tiny_bench_writes_tidy_results_and_resumes(setup: dict, tmp_path: Path) -> None:
    out = run_bench(bench_config(setup, tmp_path / "run"), progress=False)
    res = pd.read_csv(out / "results.csv")
    assert set(res.columns) == {"dataset", "task", "severity", "method", "metric", "value"}
    det = res[(res.dataset == "det") & (res.metric == "map50")]
    assert set(zip(det.severity, det.method, strict=True)) == {
        ("none", "clean"), ("light", "rainy"), ("light", "identity"), ("light", "lite"),
        ("heavy", "rainy"), ("heavy", "identity"), ("heavy", "lite")}
    seg = res[res.dataset == "seg"]
    assert {"miou", "pixel_acc", "psnr_y", "ssim_y"} <= set(seg.metric)
    # identity derainer == rainy input, so its task metrics and PSNR are the rainy ones exactly
    for ds, metric in [("det", "map50"), ("seg", "miou"), ("seg", "psnr_y")]:
        v = res[(res.dataset == ds) & (res.metric == metric) & (res.severity == "heavy")].set_index("method").value
        assert v["identity"] == pytest.approx(v["rainy"])
    psnr = res[(res.metric == "psnr_y") & (res.method == "rainy")].set_index(["dataset", "severity"]).value
    assert psnr[("det", "heavy")] < psnr[("det", "light")]
    summary = pd.read_csv(out / "summary.csv")
    assert {"drop_map50", "recovery_miou"} <= set(summary.metric)
    assert (out / "per_image.csv").is_file() and (out / "timings.json").is_file()
    assert (out / "predictions/det__heavy__lite.json").is_file()
    assert (out / "samples/seg/heavy/lite").is_dir()

    # a rerun computes nothing: every cell file stays untouched
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert len(stamps) == 14
    run_bench(bench_config(setup, tmp_path / "run"), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamps
    assert json.loads((out / "cells/det__none__clean.json").read_text())["n"] == len(
        list((setup["root"] / "scenes/det/images/val").glob("*.png")))


def test_bench_errors_tell_what_to_do(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'.*registered derainers"):
        run_bench(bench_config(setup, tmp_path, "derainers=[{name: x, model: nope}]"), progress=False)
    with pytest.raises(FileNotFoundError, match="task model not found.*nothing is ever downloaded"):
        run_bench(bench_config(setup, tmp_path, "datasets=[{name: d, task: detection, format: yolo, "
                                                "path: x/data.yaml, model: missing.pt}]"), progress=False)
    with pytest.raises(ValueError, match="unknown severity"):
        run_bench(bench_config(setup, tmp_path, "severities=[drizzle]"), progress=False)


def test_two_cpu_processes_give_the_same_results_as_one(setup: dict, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from derain.config import save_config

    cfg = bench_config(setup, tmp_path / "ddp", "severities=[heavy]", "samples=0")
    save_config(cfg, tmp_path / "bench.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "derainbench", "bench", "--no-progress", "--config", str(tmp_path / "bench.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run_bench(bench_config(setup, tmp_path / "one", "severities=[heavy]", "samples=0"), progress=False)
    assert (tmp_path / "ddp/results.csv").read_text() == (single / "results.csv").read_text()
    assert (tmp_path / "ddp/per_image.csv").read_text() == (single / "per_image.csv").read_text()
