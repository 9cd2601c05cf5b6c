"""A tiny end-to-end benchmark run: generated scenes, tiny task models, identity + mspfn-lite derainers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from eval.bench import BenchConfig, run_bench


@pytest.fixture
def setup(tiny_bench: dict) -> dict:
    return tiny_bench


def bench_config(setup: dict, out: Path, *extra: str) -> BenchConfig:
    return setup["config"](out, *extra)


def test_tiny_bench_writes_tidy_results_and_resumes(setup: dict, tiny_bench_run: Path) -> None:
    out = tiny_bench_run
    res = pd.read_csv(out / "results.csv")
    assert set(res.columns) == {"dataset", "task", "task_model", "severity", "method", "metric", "value", "ci_low",
                                "ci_high", "std", "seeds"}
    assert set(res.task_model) == {"model"}  # the one-model shorthand's name
    assert (res.seeds == 1).all() and res["std"].isna().all()  # one rain seed: no spread to report
    # 95 % paired-bootstrap intervals: around each task metric, drop and gain; none for recoveries
    for r in res[res.metric.isin(["map", "miou", "drop_miou", "gain_miou", "psnr_y"])].itertuples():
        assert r.ci_low <= r.value + 1e-9 and r.value <= r.ci_high + 1e-9, r
    assert res[res.metric.str.startswith("recovery_")].ci_low.isna().all()
    identity = res[(res.method == "identity") & (res.metric == "gain_miou")]
    assert (identity.value == 0).all() and (identity.ci_low == 0).all() and (identity.ci_high == 0).all()
    diffs = pd.read_csv(out / "differences.csv")
    assert set(zip(diffs.method, diffs.versus, strict=True)) == {("identity", "lite")}
    assert {"light", "heavy", "mean"} == set(diffs.severity)
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

    # for reports: per-class AP / IoU of every cell, sample ground truth, device and versions
    per_class = pd.read_csv(out / "per_class.csv")
    cell = json.loads((out / "cells/det__heavy__lite.json").read_text())
    ap50 = per_class[(per_class.dataset == "det") & (per_class.severity == "heavy") & (per_class.method == "lite")
                     & (per_class.metric == "ap50")].set_index("class").value
    assert list(ap50.index) == list(cell["metrics"]["per_class50"])
    assert ap50.to_dict() == pytest.approx({k: float("nan") if v is None else v
                                            for k, v in cell["metrics"]["per_class50"].items()}, nan_ok=True)
    assert set(per_class[per_class.dataset == "seg"].metric) == {"iou"}
    assert len(per_class[(per_class.dataset == "seg") & (per_class.method == "clean")]) == len(
        (setup["root"] / "scenes/seg/classes.txt").read_text().split())
    assert sorted(p.name for p in (out / "samples/det/truth").iterdir()) == sorted(
        f"{p.stem}.json" for p in (out / "samples/det/none/clean").glob("*.png"))
    assert len(list((out / "samples/seg/truth").glob("*.mask.png"))) == 2
    env = json.loads((out / "environment.json").read_text())
    assert env["device"] == "cpu" and env["processes"] == 1 and env["packages"]["torch"]

    # a rerun computes nothing: every cell file stays untouched
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert len(stamps) == 14
    run_bench(bench_config(setup, out, "samples=2"), progress=False)
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


@pytest.mark.parametrize("field", ["dataset", "derainer"])
@pytest.mark.parametrize("bad", ["../../escaped", "a/b", ".hidden", "with space", ""])
def test_names_that_would_escape_the_out_folder_are_refused(setup: dict, tmp_path: Path, field: str,
                                                            bad: str) -> None:
    """Dataset and derainer names become file-name parts (cells, samples): path syntax is refused up front."""
    root = setup["root"]
    extra = (f"derainers=[{{name: '{bad}', model: identity}}]" if field == "derainer" else
             f"datasets=[{{name: '{bad}', task: segmentation, format: masks, path: {root}/scenes/seg, "
             f"model: {root}/seg-model}}]")
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(ValueError, match=f"{field} name .* is not a plain name"):
        run_bench(bench_config(setup, out, extra), progress=False)
    assert not (tmp_path / "a").exists()


def test_two_cpu_processes_give_the_same_results_as_one(setup: dict, tmp_path: Path, free_port: str) -> None:
    import os
    import subprocess
    import sys

    from derain.config import save_config

    cfg = bench_config(setup, tmp_path / "ddp", "severities=[heavy]", "samples=0")
    save_config(cfg, tmp_path / "bench.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port,
           "-m", "derainbench", "bench", "--no-progress", "--config", str(tmp_path / "bench.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run_bench(bench_config(setup, tmp_path / "one", "severities=[heavy]", "samples=0"), progress=False)
    assert (tmp_path / "ddp/results.csv").read_text() == (single / "results.csv").read_text()
    assert (tmp_path / "ddp/per_image.csv").read_text() == (single / "per_image.csv").read_text()


def test_robustness_summary_arithmetic() -> None:
    """mPC, rPC, gap closed and the gains against a hand-computed example; a method missing a severity gets no
    summary."""
    from eval.bench import gain_rows, robustness

    def row(sev: str, method: str, value: float, metric: str = "miou") -> dict:
        return {"dataset": "d", "task": "segmentation", "severity": sev, "method": method, "metric": metric,
                "value": value}

    rows = [row("none", "clean", 0.5), row("1", "rainy", 0.3), row("2", "rainy", 0.1), row("1", "x", 0.4),
            row("2", "x", 0.3), row("1", "partial", 0.45), row("2", "psnr_only", 20.0, "psnr_y"),
            row("none", "clean", 0.9, "pixel_acc")]
    got = {(r["method"], r["metric"]): r["value"] for r in robustness(rows)}
    assert all(r["severity"] == "mean" for r in robustness(rows))
    assert got == pytest.approx({("rainy", "miou_pc"): 0.2, ("rainy", "miou_rpc"): 0.4, ("rainy", "miou_gap"): 0.3,
                                 ("x", "miou_pc"): 0.35, ("x", "miou_rpc"): 0.7, ("x", "miou_gap_closed"): 0.5})
    gains = {(r["severity"], r["method"], r["metric"]): r["value"] for r in gain_rows(rows + robustness(rows))}
    assert gains == pytest.approx({("1", "x", "gain_miou"): 0.1, ("2", "x", "gain_miou"): 0.2,
                                   ("1", "partial", "gain_miou"): 0.15,
                                   ("mean", "x", "gain_miou_pc"): 0.15})  # the mPC gain, defined for any gap


def test_pre_rained_folder_source_equals_the_preset_it_was_made_with(setup: dict, tmp_path: Path) -> None:
    """A folder written by `derainbench synth` with the run seed, given as a rain source, scores exactly like the
    in-memory preset; a labelled image without a rainy file is an error that names it."""
    from derain.synth import synthesize_folder
    from downstream.datasets import DatasetError

    root = setup["root"]
    synthesize_folder(root / "scenes/seg/val/images", tmp_path / "ext", preset="heavy", seed=0, progress=False)
    seg = (f"datasets=[{{name: seg, task: segmentation, format: masks, path: {root}/scenes/seg, "
           f"model: {root}/seg-model, rainy: [{{name: ext, path: {tmp_path / 'ext'}}}]}}]")
    run = run_bench(bench_config(setup, tmp_path / "run", seg, "severities=[heavy]", "samples=0"), progress=False)
    res = pd.read_csv(run / "results.csv").set_index(["severity", "method", "metric"]).value
    assert {s for s, _, _ in res.index} == {"none", "heavy", "ext", "mean"}
    for method in ("rainy", "identity", "lite"):
        for metric in ("miou", "pixel_acc", "psnr_y", "ssim_y"):
            assert res[("ext", method, metric)] == pytest.approx(res[("heavy", method, metric)], abs=1e-12)
    assert res[("mean", "rainy", "miou_pc")] == pytest.approx(res[("heavy", "rainy", "miou")])  # sources not in mPC
    victim = sorted((tmp_path / "ext").glob("*.png"))[1]
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"rain source 'ext'.*1 without a rainy file.*{victim.stem}"):
        run_bench(bench_config(setup, tmp_path / "run2", seg, "severities=[heavy]", "samples=0"), progress=False)


def test_real_rain_dataset_has_no_clean_rows_and_no_psnr(setup: dict, tmp_path: Path) -> None:
    root = setup["root"]
    seg = (f"datasets=[{{name: seg, task: segmentation, format: masks, path: {root}/scenes/seg, "
           f"model: {root}/seg-model, real_rain: real}}]")
    run = run_bench(bench_config(setup, tmp_path / "run", seg, "samples=1"), progress=False)
    res = pd.read_csv(run / "results.csv")
    assert set(res.severity) == {"real"} and "clean" not in set(res.method)
    assert set(res.method) == {"rainy", "identity", "lite"}
    assert not {"psnr_y", "ssim_y"} & set(res.metric)  # absent, not zero
    assert {"miou", "pixel_acc", "gain_miou"} <= set(res.metric) and not res.metric.str.startswith("drop_").any()
    gain = res[(res.method == "identity") & (res.metric == "gain_miou")].iloc[0]
    assert gain.value == 0 and gain.ci_low == 0 and gain.ci_high == 0
    with pytest.raises(ValueError, match="rain source names must be unique and differ from the presets"):
        run_bench(bench_config(setup, tmp_path / "x", seg.replace("real_rain: real", "real_rain: heavy")),
                  progress=False)


def test_cells_of_a_changed_config_are_recomputed(setup: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A derainer renamed to another model, or its weights retrained in place, never leaves stale numbers."""
    import torch

    from derain import build_model
    from derain.checkpoint import save_checkpoint

    seg = (f"datasets=[{{name: seg, task: segmentation, format: masks, path: {setup['root']}/scenes/seg, "
           f"model: {setup['root']}/seg-model}}]")
    out = tmp_path / "run"

    def run(model: Path) -> dict[str, int]:
        run_bench(bench_config(setup, out, seg, "severities=[heavy]", "samples=0", "bootstrap=0",
                               f"derainers=[{{name: lite, model: {model}}}]"), progress=False)
        return {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}

    def checkpoint(folder: Path, seed: int) -> Path:
        torch.manual_seed(seed)
        model = build_model("mspfn-lite", units=1)
        with torch.no_grad():
            for prm in model.parameters():
                prm.add_(0.05 * torch.randn_like(prm))
        return save_checkpoint(folder, model, name="mspfn-lite", config={"units": 1})

    first = run(checkpoint(tmp_path / "a", 0))
    lite = pd.read_csv(out / "results.csv").set_index(["method", "metric"]).value[("lite", "psnr_y")]
    assert run(tmp_path / "a") == first and "recomputing" not in capsys.readouterr().out  # nothing changed
    second = run(checkpoint(tmp_path / "b", 1))  # same name, another model
    assert "recomputing 1 finished cell" in capsys.readouterr().out
    changed = {k for k in first if first[k] != second[k]}
    assert changed == {"seg__heavy__lite.json"}
    assert pd.read_csv(out / "results.csv").set_index(["method", "metric"]).value[("lite", "psnr_y")] != lite
    checkpoint(tmp_path / "b", 2)  # retrained in place: same path, other weights
    third = run(tmp_path / "b")
    assert {k for k in second if second[k] != third[k]} == {"seg__heavy__lite.json"}


def test_bad_options_and_sizes_fail_before_any_cell(setup: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"derainer 'lite': unknown option 'chanels' for mspfn-lite"):
        run_bench(bench_config(setup, out, f"derainers=[{{name: lite, model: {setup['root']}/lite, "
                                           "options: {chanels: 8}}]"), progress=False)
    with pytest.raises(ValueError, match="imgsz must be a positive number of pixels, got -64"):
        run_bench(bench_config(setup, out, f"datasets=[{{name: d, task: detection, format: yolo, "
                                           f"path: {setup['root']}/scenes/det/data.yaml, model: yolo11n.yaml, "
                                           "imgsz: -64}]"), progress=False)
    assert not out.exists()


def test_several_rain_seeds_give_mean_std_and_intervals_over_seeds(setup: dict, tmp_path: Path) -> None:
    """rain_seeds=2: each synthetic cell is scored with seeds 0 and 1; values are their mean, std their spread, and the
    single-seed runs with seeds 0 and 1 reproduce the per-seed values exactly."""
    from reports.runs import load_runs
    from reports.tables import main_table_text

    root = setup["root"]
    seg = (f"datasets=[{{name: seg, task: segmentation, format: masks, path: {root}/scenes/seg, "
           f"model: {root}/seg-model}}]")
    args = (seg, "severities=[heavy]", "samples=1", "bootstrap=200")
    two = run_bench(bench_config(setup, tmp_path / "two", *args, "rain_seeds=2"), progress=False)
    assert (two / "cells/seg__heavy__lite__r1.json").is_file()
    assert not (two / "cells/seg__none__clean__r1.json").exists()  # clean images have no rain seed
    res = pd.read_csv(two / "results.csv").set_index(["severity", "method", "metric"])
    per_seed = pd.read_csv(two / "per_seed.csv").set_index(["severity", "method", "metric", "seed"]).value
    singles = {}
    for seed in (0, 1):
        out = run_bench(bench_config(setup, tmp_path / f"s{seed}", *args, f"seed={seed}"), progress=False)
        singles[seed] = pd.read_csv(out / "results.csv").set_index(["severity", "method", "metric"]).value
    for key in [("heavy", "lite", "psnr_y"), ("heavy", "rainy", "miou"), ("heavy", "rainy", "drop_miou"),
                ("mean", "lite", "miou_pc")]:
        a, b = singles[0][key], singles[1][key]
        assert per_seed[(*key, 0)] == pytest.approx(a) and per_seed[(*key, 1)] == pytest.approx(b)
        row = res.loc[key]
        assert row.value == pytest.approx((a + b) / 2) and row.seeds == 2
        assert row["std"] == pytest.approx(abs(a - b) / 2**0.5)
    assert singles[0][("heavy", "lite", "psnr_y")] != singles[1][("heavy", "lite", "psnr_y")]  # other rain
    clean = res.loc[("none", "clean", "miou")]
    assert clean.seeds == 1 and pd.isna(clean["std"]) and clean.value == singles[0][("none", "clean", "miou")]
    lite = res.loc[("heavy", "lite", "psnr_y")]
    assert lite.ci_low <= lite.value <= lite.ci_high
    identity = res.loc[("heavy", "identity", "gain_miou")]  # identical methods: 0 with a zero-width interval
    assert identity.value == 0 and identity.ci_low == 0 and identity.ci_high == 0
    identity = res.loc[("mean", "identity", "gain_miou_pc")]  # so is the gain of its mPC
    assert identity.value == 0 and identity.ci_low == 0 and identity.ci_high == 0
    gain = res.loc[("mean", "lite", "gain_miou_pc")]  # mPC derained − mPC rainy, with its interval
    assert gain.value == pytest.approx(res.loc[("mean", "lite", "miou_pc")].value
                                       - res.loc[("mean", "rainy", "miou_pc")].value)
    assert gain.ci_low <= gain.value <= gain.ci_high
    assert set(pd.read_csv(two / "per_image.csv").query("severity == 'heavy'").seed) == {0, 1}
    # the report reads both seeds from one run: mean ± std, intervals kept
    combined = load_runs(two)
    assert combined.seeds == [0, 1]
    mean, std, n = combined.value("seg", "heavy", "lite", "psnr_y")
    assert (mean, std, n) == (pytest.approx(lite.value), pytest.approx(lite["std"]), 2)
    assert combined.interval("seg", "heavy", "lite", "psnr_y") == (pytest.approx(lite.ci_low),
                                                                  pytest.approx(lite.ci_high))
    assert "Mean ± std over 2 rain seeds (0, 1)" in main_table_text(combined)


def test_a_second_bench_on_the_same_folder_is_refused(setup: dict, tmp_path: Path) -> None:
    from derain.checkpoint import FolderLockedError, folder_lock

    out = tmp_path / "run"
    with folder_lock(out, "derainbench bench"):
        with pytest.raises(FolderLockedError, match="in use by pid .*derainbench bench"):
            run_bench(bench_config(setup, out, "severities=[heavy]"), progress=False)
    assert not (out / "cells").exists()


def _heavy_segmentation_run(setup: dict, out: Path) -> BenchConfig:
    """A small config: the segmentation scenes under heavy rain only, no samples, no intervals."""
    root = setup["root"]
    return bench_config(setup, out, "severities=[heavy]", "samples=0", "bootstrap=0",
                        f"datasets=[{{name: seg, task: segmentation, format: masks, path: {root}/scenes/seg, "
                        f"model: {root}/seg-model}}]")


def test_cells_scored_by_other_scoring_code_are_recomputed(setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A new version of the metric code (mAP, mIoU, PSNR, inference) never leaves numbers of the old one."""
    import eval.fingerprints as fingerprints

    cfg = _heavy_segmentation_run(setup, tmp_path / "run")
    run_bench(cfg, progress=False)
    assert "recomputing" not in capsys.readouterr().out
    monkeypatch.setattr(fingerprints, "scoring_code_digest", lambda task: "another-version")
    run_bench(cfg, progress=False)
    assert "recomputing 4 finished cell(s)" in capsys.readouterr().out


def test_cells_with_rain_of_another_synthesizer_are_recomputed(setup: dict, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """An edited rain synthesizer makes other rain: its cells (rainy and derained, not clean) are recomputed."""
    import eval.image_cache as image_cache

    cfg = _heavy_segmentation_run(setup, tmp_path / "run")
    run_bench(cfg, progress=False)
    capsys.readouterr()
    monkeypatch.setattr(image_cache, "synthesizer_digest", lambda: "another-synthesizer")
    run_bench(cfg, progress=False)
    assert "recomputing 3 finished cell(s)" in capsys.readouterr().out  # heavy: rainy, identity, mspfn-lite


def test_instance_segmentation_bench_and_report(setup: dict, tmp_path: Path) -> None:
    """The third task end to end through the same runner and report: mask and box mAP per cell with intervals,
    per-class mask AP, COCO predictions with RLE masks, samples that decode to the dataset's masks, and a report with
    its table and grids; the cell's numbers equal scoring the same predictions with the task's evaluator directly."""
    import numpy as np
    import torch

    from downstream.tasks import get_task, load_task_dataset
    from reports.build import build_report

    root = setup["root"]
    cfg = bench_config(setup, tmp_path / "run", "severities=[heavy]", "samples=2", "bootstrap=200",
                       f"datasets=[{{name: inst, task: instance, format: yolo, path: {root}/scenes/inst/data.yaml, "
                       "model: yolo11n-seg.yaml, imgsz: 64}]")
    out = run_bench(cfg, progress=False)
    res = pd.read_csv(out / "results.csv")
    keys = ["mask_map", "mask_map50", "box_map", "box_map50"]
    for method in ("clean", "rainy", "identity", "lite"):
        assert set(keys) <= set(res[res.method == method].metric), method
    for r in res[res.metric.isin(keys) & (res.severity != "mean")].itertuples():
        assert r.ci_low <= r.value + 1e-9 <= r.ci_high + 2e-9, r
    heavy = res[(res.severity == "heavy") & (res.metric == "mask_map")].set_index("method").value
    assert heavy["identity"] == pytest.approx(heavy["rainy"])
    assert {"drop_mask_map", "recovery_mask_map50", "mask_map_pc", "box_map50_gap_closed"} <= set(res.metric)
    assert set(pd.read_csv(out / "per_class.csv").metric) == {"mask_ap", "mask_ap50"}
    rows = json.loads((out / "predictions/inst__none__clean.json").read_text())
    assert rows and all(set(r["segmentation"]) == {"size", "counts"} for r in rows)

    task = get_task("instance")
    ds = load_task_dataset("instance", "yolo", root / "scenes/inst/data.yaml", "val")
    truth = task.load_label(out / "samples/inst/truth", ds.image_path(0).stem)
    np.testing.assert_array_equal(truth["masks"], ds[0][1]["masks"])
    model = task.for_inference(task.load_model("yolo11n-seg.yaml", ds.names))
    evaluator = task.evaluator(ds.names)
    for i in range(len(ds)):
        image, label = ds[i]
        evaluator.update(task.predict(model, torch.from_numpy(image).permute(2, 0, 1)[None], imgsz=64), [label], [i])
    direct = evaluator.compute()
    cell = json.loads((out / "cells/inst__none__clean.json").read_text())
    assert cell["metrics"]["mask_map50"] == pytest.approx(direct["mask_map50"], abs=1e-9)
    assert cell["metrics"]["box_map"] == pytest.approx(direct["box_map"], abs=1e-9)

    report = build_report(out, tmp_path / "report", formats="md,csv", images=2)
    md = (report.out / "report.md").read_text()
    assert "Instance segmentation (mask mAP, mask mAP@.5, box mAP, box mAP@.5, drop, recovery)" in md
    assert (report.out / "tables/instance.csv").is_file() and (report.out / "figures/grid_inst_heavy.png").is_file()
    assert "masks tinted in their class colour" in md


def test_zoo_derainers_bench_and_report(setup: dict, tmp_path: Path) -> None:
    """A small Restormer and MPRNet, saved as their authors publish them, run as bench derainers beside PReNet, and the
    report names each architecture, its weights digest and its licence."""
    import hashlib

    import torch

    from derain import zoo
    from reports.build import build_report

    if not zoo.extra_installed():
        pytest.skip("spandrel-extra-arches not installed")
    torch.manual_seed(0)
    restormer = zoo.zoo("Restormer", {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1,
                                      "heads": [1, 1, 2, 2]})
    mprnet = zoo.zoo("MPRNet", {"n_feat": 8, "scale_unetfeats": 4, "scale_orsnetfeats": 4, "num_cab": 1})
    torch.save({"params": restormer.state_dict()}, tmp_path / "deraining.pth")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in mprnet.state_dict().items()}},
               tmp_path / "model_deraining.pth")
    root = setup["root"]
    cfg = bench_config(setup, tmp_path / "run", "severities=[heavy]", "samples=1", "bootstrap=0",
                       f"datasets=[{{name: seg, task: segmentation, format: masks, path: {root}/scenes/seg, "
                       f"model: {root}/seg-model}}]",
                       f"derainers=[{{name: prenet, model: prenet}}, "
                       f"{{name: restormer, model: {tmp_path}/deraining.pth}}, "
                       f"{{name: mprnet, model: {tmp_path}/model_deraining.pth}}]")
    out = run_bench(cfg, progress=False)
    res = pd.read_csv(out / "results.csv")
    assert {"prenet", "restormer", "mprnet"} <= set(res.method)
    info = json.loads((out / "derainers.json").read_text())
    assert info["restormer"]["architecture"] == "Restormer (zoo)" and info["restormer"]["non_commercial"]
    mprnet_file = (tmp_path / "model_deraining.pth").read_bytes()
    assert info["mprnet"]["weights_sha256"] == hashlib.sha256(mprnet_file).hexdigest()
    assert info["prenet"]["architecture"] == "prenet" and "licence" not in info["prenet"]

    report = build_report(out, tmp_path / "report", formats="md", images=1)
    md = (report.out / "report.md").read_text()
    methods = md[md.index("Methods"):]
    for line_start, arch in (("| restormer", "Restormer (zoo)"), ("| mprnet", "MPRNet (zoo)")):
        row = next(line for line in methods.splitlines() if line.startswith(line_start))
        assert arch in row and "Academic Public License" in row and "non-commercial use only" in row
    assert info["restormer"]["weights_sha256"][:16] in methods


def test_a_nan_derainer_fails_its_cells_and_is_never_scored(setup: dict, tmp_path: Path) -> None:
    """One NaN tensor in a valid checkpoint once gave black images ranked best; now its cells fail with one line naming
    the derainer, the other cells are written, and no row of the broken derainer reaches results.csv."""
    import torch

    from derain.checkpoint import load_derainer, save_checkpoint
    from eval.bench import CellsFailedError

    root = setup["root"]
    lite = load_derainer(root / "lite")
    with torch.no_grad():
        next(lite.parameters()).view(-1)[0] = float("nan")
    save_checkpoint(tmp_path / "nan-lite", lite, name="mspfn-lite", config={"units": 1})
    cfg = bench_config(setup, tmp_path / "run", "severities=[heavy]", "samples=0", "bootstrap=0",
                       f"datasets=[{{name: seg, task: segmentation, format: masks, path: {root}/scenes/seg, "
                       f"model: {root}/seg-model}}]",
                       f"derainers=[{{name: identity, model: identity}}, {{name: broken, model: {tmp_path}/nan-lite}}]")
    with pytest.raises(CellsFailedError, match="seg__heavy__broken.*derainer mspfn-lite returned .* non-finite"):
        run_bench(cfg, progress=False)
    res = pd.read_csv(tmp_path / "run/results.csv")
    assert "broken" not in set(res.method) and {"clean", "rainy", "identity"} <= set(res.method)


def test_a_weights_file_that_is_not_a_derainer_fails_before_any_cell(setup: dict, tmp_path: Path) -> None:
    import torch

    torch.save({"encoder.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "unknown.pth")
    cfg = bench_config(setup, tmp_path / "run", f"derainers=[{{name: odd, model: {tmp_path}/unknown.pth}}]")
    with pytest.raises(ValueError, match="derainer 'odd': .*unknown.pth.*recognises none"):
        run_bench(cfg, progress=False)
    assert not (tmp_path / "run/cells").exists()


def _copied_segmentation_run(setup: dict, tmp_path: Path) -> tuple[BenchConfig, Path]:
    """The heavy-rain segmentation config over a private copy of the scenes (the tests edit its files)."""
    import shutil

    root = setup["root"]
    data = Path(shutil.copytree(root / "scenes/seg", tmp_path / "seg"))
    cfg = bench_config(setup, tmp_path / "run", "severities=[heavy]", "samples=0", "bootstrap=0",
                       f"datasets=[{{name: seg, task: segmentation, format: masks, path: {data}, "
                       f"model: {root}/seg-model}}]")
    return cfg, data


def test_cells_are_recomputed_when_the_dataset_files_change(setup: dict, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The fingerprint covers the content of every file a cell reads (images, masks, class list): a rewritten mask
    recomputes every cell of the dataset and the log says why, naming the file; a file rewritten with the same bytes
    recomputes nothing; an invalid label is found on the rerun instead of the old numbers being kept."""
    import numpy as np
    from PIL import Image

    from downstream.datasets import DatasetError

    cfg, data = _copied_segmentation_run(setup, tmp_path)
    run_bench(cfg, progress=False)
    miou = pd.read_csv(cfg.out + "/results.csv").set_index(["method", "metric"]).value[("clean", "miou")]
    capsys.readouterr()
    mask = sorted((data / "val/masks").glob("*.png"))[0]
    mask.write_bytes(mask.read_bytes())  # new mtime, same content
    run_bench(cfg, progress=False)
    assert "recomputing" not in capsys.readouterr().out
    Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)  # all background now
    run_bench(cfg, progress=False)
    log = capsys.readouterr().out
    assert "recomputing 4 finished cell(s)" in log
    assert f"dataset files (1 changed: masks/{mask.name} under {data / 'val'}): seg__none__clean, " in log
    assert pd.read_csv(cfg.out + "/results.csv").set_index(["method", "metric"]).value[("clean", "miou")] != miou
    Image.fromarray(np.full_like(np.asarray(Image.open(mask)), 77)).save(mask)  # class 77 does not exist
    with pytest.raises(DatasetError, match=f"{mask.name}: class ids \\[77\\]"):
        run_bench(cfg, progress=False)


@pytest.mark.parametrize("inside", ["det/images/val/run", "seg/val/images/run"])
def test_an_out_folder_inside_a_dataset_image_folder_is_refused(setup: dict, tmp_path: Path, inside: str) -> None:
    """Its cache and sample PNGs would be read back as dataset images by the next run."""
    import shutil

    root = setup["root"]
    shutil.copytree(root / "scenes", tmp_path / "scenes")
    out = tmp_path / "scenes" / inside
    cfg = bench_config(setup, out, f"datasets=[{{name: det, task: detection, format: yolo, "
                                   f"path: {tmp_path}/scenes/det/data.yaml, model: yolo11n.yaml, imgsz: 64}}, "
                                   f"{{name: seg, task: segmentation, format: masks, path: {tmp_path}/scenes/seg, "
                                   f"model: {root}/seg-model}}]")
    with pytest.raises(ValueError, match=r"out .*run lies inside the images of dataset '(det|seg)' .*choose an out"):
        run_bench(cfg, progress=False)
    assert not out.exists()


def test_detection_cells_equal_pycocotools_with_crowd_and_write_rescorable_predictions(setup: dict,
                                                                                     tmp_path: Path) -> None:
    """A COCO set with crowd regions: results.csv's mAP equals pycocotools on the bench's own prediction JSON
    against the dataset's annotation file (its own, non-contiguous ids) and against the written
    ``predictions/<dataset>.gt.json``; the detector ran at the size its checkpoint records, and the cell says so."""
    import contextlib
    import io

    import torch
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from ultralytics.nn.tasks import DetectionModel

    from downstream.datasets import to_coco_dict
    from downstream.tasks import load_task_dataset

    def pycocotools(gt: Path, rows: list[dict]) -> list[float]:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(gt))
            ev = COCOeval(coco, coco.loadRes(rows), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return list(ev.stats[:2])

    root = setup["root"]
    yolo = load_task_dataset("detection", "yolo", root / "scenes/det/data.yaml", "val")
    gt = to_coco_dict(yolo)
    image_id = {im["id"]: 500 + 3 * k for k, im in enumerate(gt["images"])}
    category_id = {c["id"]: 10 * c["id"] for c in gt["categories"]}
    for im in gt["images"]:
        im["id"] = image_id[im["id"]]
    for c in gt["categories"]:
        c["id"] = category_id[c["id"]]
    gt["annotations"] = []
    ann0 = tmp_path / "ann0.json"
    ann0.write_text(json.dumps(gt))
    torch.manual_seed(0)
    net = DetectionModel("yolo11n.yaml", nc=len(yolo.names), verbose=False)
    net.names = dict(enumerate(yolo.names))
    torch.save({"model": net, "train_args": {"imgsz": 64}}, tmp_path / "det.pt")

    def run(ann: Path, out: str) -> Path:
        spec = (f"{{name: cc, task: detection, format: coco, model: {tmp_path}/det.pt, "
                f"path: {{images: {yolo.images_dir}, annotations: {ann}}}}}")
        return run_bench(bench_config(setup, tmp_path / out, "severities=[light]", "derainers=[]", "bootstrap=50",
                                      f"datasets=[{spec}]"), progress=False)

    out = run(ann0, "run0")
    cell = json.loads((out / "cells/cc__none__clean.json").read_text())
    assert (cell["imgsz"], cell["imgsz_from"]) == (64, "checkpoint")
    rows = json.loads((out / "predictions/cc__none__clean.json").read_text())
    assert {r["image_id"] for r in rows} <= set(image_id.values())
    assert {r["category_id"] for r in rows} <= set(category_id.values())
    # ground truth from the predictions: in each image, of the class of its best detection, the top detection
    # becomes a crowd region and the next one an object
    anns = []
    for im in gt["images"]:
        mine = sorted((r for r in rows if r["image_id"] == im["id"]), key=lambda r: -r["score"])
        top = [r for r in mine if r["category_id"] == mine[0]["category_id"]][:2]
        for k, r in enumerate(top):
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": r["category_id"],
                         "bbox": r["bbox"], "area": r["bbox"][2] * r["bbox"][3], "iscrowd": int(k == 0)})
    ann1 = tmp_path / "ann1.json"
    ann1.write_text(json.dumps({**gt, "annotations": anns}))
    out = run(ann1, "run1")
    res = pd.read_csv(out / "results.csv").set_index(["severity", "method", "metric"]).value
    for cell_key, sev, method in (("cc__none__clean", "none", "clean"), ("cc__light__rainy", "light", "rainy")):
        rows = json.loads((out / f"predictions/{cell_key}.json").read_text())
        official = pycocotools(ann1, rows)
        assert res[(sev, method, "map")] == pytest.approx(official[0], abs=1e-9)
        assert res[(sev, method, "map50")] == pytest.approx(official[1], abs=1e-9)
        assert pycocotools(out / "predictions/cc.gt.json", rows) == pytest.approx(official, abs=1e-12)
    no_crowd = tmp_path / "ann1-no-crowd.json"
    no_crowd.write_text(json.dumps({**gt, "annotations": [a for a in anns if not a["iscrowd"]]}))  # the old scoring
    rows = json.loads((out / "predictions/cc__none__clean.json").read_text())
    assert abs(pycocotools(no_crowd, rows)[1] - res[("none", "clean", "map50")]) > 0.05  # crowd matters here


def test_several_task_models_per_dataset_and_a_rerun_adding_one(setup: dict, tmp_path: Path) -> None:
    """models: [...] scores every (condition, derainer, task model); a one-model run folder (model:, cell files
    without a task model as older versions wrote them) keeps its cells when a second model is added; strategies
    across task models get paired-bootstrap differences."""
    import torch

    from downstream.segmentation import SegmenterConfig, build_segmenter, save_segmenter

    root, out = setup["root"], tmp_path / "run"
    classes = (root / "scenes/seg/classes.txt").read_text().split()
    torch.manual_seed(1)
    save_segmenter(build_segmenter(SegmenterConfig(arch="Unet", encoder="resnet18", num_classes=len(classes),
                                                   classes=classes, encoder_depth=3, decoder_channels=[16, 8, 8])),
                   tmp_path / "seg-rain")
    common = ["severities=[heavy]", "samples=0", "bootstrap=50", "derainers=[{name: identity, model: identity}, "
              "{name: joint, model: identity, tuned_with: clean-trained}]"]
    seg = f"name: seg, task: segmentation, format: masks, path: {root}/scenes/seg"
    old = [*common[:3], "derainers=[{name: identity, model: identity}, {name: joint, model: identity}]"]
    run_bench(bench_config(setup, out, f"datasets=[{{{seg}, model: {root}/seg-model}}]", *old), progress=False)
    for cell in (out / "cells").glob("*.json"):  # as written before cells recorded their task model
        data = json.loads(cell.read_text())
        data.pop("task_model")
        data["cell"].pop("task_model")
        cell.write_text(json.dumps(data))
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert set(stamps) == {"seg__none__clean.json", "seg__heavy__rainy.json", "seg__heavy__identity.json",
                           "seg__heavy__joint.json"}
    assert set(pd.read_csv(out / "results.csv").task_model) == {"model"}

    models = (f"models: [{{name: clean-trained, model: {root}/seg-model}}, "
              f"{{name: rain-trained, model: {tmp_path}/seg-rain, trained_on: rain}}]")
    run_bench(bench_config(setup, out, f"datasets=[{{{seg}, {models}}}]", *common), progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert {k: after[k] for k in stamps} == stamps  # the first model's cells were reused, not recomputed
    assert set(after) - set(stamps) == {f"seg__{c}__on-rain-trained.json" for c in ("none__clean", "heavy__rainy",
                                                                                    "heavy__identity", "heavy__joint")}

    res = pd.read_csv(out / "results.csv")
    miou = res[res.metric == "miou"]
    assert set(zip(miou.task_model, miou.severity, miou.method, strict=True)) == {
        (tm, sev, m) for tm in ("clean-trained", "rain-trained")
        for sev, m in (("none", "clean"), ("heavy", "rainy"), ("heavy", "identity"), ("heavy", "joint"))}
    v = miou.set_index(["task_model", "severity", "method"]).value
    assert v[("clean-trained", "none", "clean")] != v[("rain-trained", "none", "clean")]  # two different models
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary[summary.metric == "drop_miou"].task_model) == {"clean-trained", "rain-trained"}
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 2 * 4 * json.loads((out / "cells/seg__none__clean.json").read_text())["n"]

    diffs = pd.read_csv(out / "differences.csv")
    cross = diffs[(diffs.task_model == "rain-trained") & (diffs.versus_task_model == "clean-trained")]
    row = cross[(cross.severity == "heavy") & (cross.method == "rainy") & (cross.versus == "identity")
                & (cross.metric == "miou")].iloc[0]  # rainy -> rain-trained vs derained -> clean-trained
    assert row.value == pytest.approx(v[("rain-trained", "heavy", "rainy")] - v[("clean-trained", "heavy", "identity")])
    assert row.ci_low <= row.value <= row.ci_high and row.ci_low < row.ci_high  # paired bootstrap interval
    assert {("clean", "none"), ("rainy", "heavy"), ("identity", "heavy")} <= set(
        zip(cross.method, cross.severity, strict=True))
    assert set(cross[cross.method == "clean"].versus) == {"clean"} and "mean" in set(cross.severity)

    from reports.build import build_report

    report = build_report([out], tmp_path / "report", formats="md,csv")
    table = pd.read_csv(tmp_path / "report/tables/strategies_seg.csv")
    assert list(table.strategy) == ["rainy → clean-trained", "identity → clean-trained", "rainy → rain-trained",
                                    "identity → rain-trained", "joint → clean-trained (joint)"]
    assert list(table["trained on"]) == ["clean", "clean", "rain", "rain", "clean"]
    assert table.loc[2, "heavy"] == pytest.approx(v[("rain-trained", "heavy", "rainy")])
    assert table.loc[2, "none"] == pytest.approx(v[("rain-trained", "none", "clean")])
    assert table["heavy_ci"].str.match(r"\[\d\.\d{3}, \d\.\d{3}\]").all() and "mpc" in table
    md = report.markdown.read_text()
    assert "seg: strategies against rain" in md and "figures/strategies_seg.png" in md
    assert (tmp_path / "report/figures/strategies_seg.png").stat().st_size > 5000


def test_task_model_config_errors(setup: dict, tmp_path: Path) -> None:
    root, out = setup["root"], tmp_path / "run"
    seg = f"name: seg, task: segmentation, format: masks, path: {root}/scenes/seg"
    cases = [
        (f"{{{seg}}}", "give its task model as model: PATH or several as models"),
        (f"{{{seg}, model: {root}/seg-model, models: [{{name: a, model: {root}/seg-model}}]}}", "not both"),
        (f"{{{seg}, models: [{{name: a, model: {root}/seg-model, trained_on: fog}}]}}", "trained_on must be one of"),
        (f"{{{seg}, models: [{{name: a, model: {root}/seg-model}}, {{name: a, model: {root}/seg-model}}]}}",
         "task model names must be unique"),
    ]
    for spec, message in cases:
        with pytest.raises(ValueError, match=message):
            run_bench(bench_config(setup, out, f"datasets=[{spec}]"), progress=False)
    with pytest.raises(ValueError, match="tuned_with 'rain-trained' names no task model"):
        run_bench(bench_config(setup, out, "derainers=[{name: identity, model: identity, tuned_with: rain-trained}]"),
                  progress=False)
    assert not out.exists()
