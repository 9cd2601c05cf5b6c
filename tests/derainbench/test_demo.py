"""The main job, shrunk (``--fast``): every stage runs end to end, reruns reuse, ``--force`` reproduces it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from derainbench.cli import main
from derainbench.demo import ASSETS, MANIFEST, MODELS, DemoConfig, demo_config, rain_is_current, shipped_models

METHODS = {"clean", "rainy", "identity", "prenet", "mspfn-lite", "mspfn-lite+det", "mspfn-lite+restore"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--fast", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    return out


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_demo_runs_every_stage(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    val = sorted(p.name for p in (demo_dir / "data/scenes/seg/val/images").glob("*.png"))
    assert val
    for sev in ("light", "heavy"):
        assert sorted(p.name for p in (demo_dir / "data/rainy" / sev).glob("*.png")) == val
    models = demo_dir / "models"
    assert (models / "detector.pt").is_file() and (models / "segmenter" / "model.safetensors").is_file()
    for name in ("mspfn-lite", "prenet"):
        assert json.loads((models / name / "model.json").read_text())["name"] == name
    manifest = json.loads((models / MANIFEST).read_text())
    assert manifest["command"].startswith("derainbench demo --retrain")
    assert set(manifest["models"]) == set(MODELS)
    rain = json.loads((models / "segmenter-rain" / "segmenter.json").read_text())["rain"]  # the third strategy's
    assert rain["p"] == 0.5 and rain["presets"] == ["light@v2", "heavy@v2"]  # rain, by versioned preset name
    assert "rain" not in json.loads((models / "segmenter" / "segmenter.json").read_text())
    summary = json.loads((demo_dir / "joint/mspfn-lite+det/summary.json").read_text())
    assert summary["task"] == "detection" and summary["steps"] == 2
    det_cfg, ctrl_cfg = (yaml.safe_load((demo_dir / f"joint/{n}/config.yaml").read_text())
                         for n in ("mspfn-lite+det", "mspfn-lite+restore"))
    assert det_cfg["weights"]["task"] > 0 and ctrl_cfg["weights"]["task"] == 0  # the control: restoration only
    assert {k: v for k, v in det_cfg.items() if k not in ("name", "weights")} == {
        k: v for k, v in ctrl_cfg.items() if k not in ("name", "weights")}  # same steps, data, seed

    rows = read_rows(demo_dir / "bench/results.csv")
    assert {r["method"] for r in rows} == METHODS
    assert {r["severity"] for r in rows} == {"none", "light", "heavy", "mean"}  # mean: the robustness summary
    assert {r["metric"] for r in rows if r["severity"] == "mean"} == {
        f"{m}_{k}" for m in ("map", "map50", "miou", "pixel_acc") for k in ("pc", "rpc", "gap", "gap_closed")} | {
        f"gain_{m}_pc" for m in ("map", "map50", "miou", "pixel_acc")}
    assert {r["task"] for r in rows} == {"detection", "segmentation"}
    assert {(r["dataset"], r["task_model"]) for r in rows} == {  # every cell scored by both task models
        ("scenes-det", "det-clean"), ("scenes-det", "det-rain"), ("scenes-seg", "seg-clean"),
        ("scenes-seg", "seg-rain")}
    assert {(r["task_model"], r["method"]) for r in rows if r["severity"] == "none"} == {
        (tm, "clean") for tm in ("det-clean", "det-rain", "seg-clean", "seg-rain")}  # clean rows per task model
    value = {(r["dataset"], r["severity"], r["method"], r["metric"]): float(r["value"]) for r in rows}
    assert value[("scenes-det", "heavy", "rainy", "psnr_y")] < value[("scenes-det", "light", "rainy", "psnr_y")] - 5
    assert (demo_dir / "report/report.html").is_file() and (demo_dir / "report/report.md").is_file()
    stages = sorted(p.stem for p in (demo_dir / ".stages").glob("*.json"))
    assert stages == sorted(["scenes", "rain", "models", "joint", "bench", "report"])


def test_rerun_reuses_stages_and_prints_the_table(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (demo_dir / "bench/results.csv").read_text()
    assert main(["demo", "--fast", "--out", str(demo_dir), "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier") == 6
    assert "mspfn-lite+det" in out and "report.html" in out
    assert "scenes-det: strategies against rain" in out and "rainy → det-rain" in out  # the three strategies
    assert "mspfn-lite+det → det-clean (joint)" in out
    assert (demo_dir / "bench/results.csv").read_text() == before


def test_a_redone_stage_redoes_the_later_ones(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A joint marker of an older demo version (one tuned model instead of two) is redone, then bench and report."""
    marker = demo_dir / ".stages/joint.json"
    saved = marker.read_text()
    marker.write_text(json.dumps({"result": "old/joint/path", "seconds": 1}))
    try:
        assert main(["demo", "--fast", "--out", str(demo_dir), "--device", "cpu", "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert out.count("done earlier") == 3  # scenes, rain, models
        assert "joint: marker from an older demo version" in out
        assert "bench: an earlier stage was redone" in out and "report: an earlier stage was redone" in out
    finally:
        marker.write_text(saved)


def test_force_redoes_everything_identically(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (demo_dir / "bench/results.csv").read_text()
    cells = demo_dir / "bench/cells"
    assert any(cells.iterdir())
    assert main(["demo", "--fast", "--force", "--out", str(demo_dir), "--device", "cpu", "--no-progress"]) == 0
    assert "done earlier" not in capsys.readouterr().out
    assert (demo_dir / "bench/results.csv").read_text() == before  # deterministic on the same machine


def test_rain_of_another_preset_version_is_redone(demo_dir: Path) -> None:
    """The rain stage's marker names the preset versions; markers from before versioning, or of another version of
    a severity (``heavy`` moved from heavy@v1 to heavy@v2), do not count as finished."""
    cfg = demo_config(fast=True, out=str(demo_dir))
    marker = json.loads((demo_dir / ".stages/rain.json").read_text())["result"]
    assert marker["presets"] == {"light": "light@v2", "heavy": "heavy@v2"} and rain_is_current(cfg, marker)
    assert not rain_is_current(cfg, {"light": "data/rainy/light", "heavy": "data/rainy/heavy"})  # 0.2.0 marker
    assert not rain_is_current(cfg, {**marker, "presets": {"light": "light@v2", "heavy": "heavy@v1"}})


def test_joint_runs_train_side_by_side_on_a_multicore_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from derainbench.demo import _side_by_side_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert _side_by_side_threads(demo_config(overrides=["device=cpu"])) == 4  # half the threads each
    assert _side_by_side_threads(demo_config(overrides=["device=cpu", "joint.side_by_side=false"])) is None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert _side_by_side_threads(demo_config(overrides=["device=cpu"])) is None  # one core: in turn
    if torch.cuda.is_available():
        assert _side_by_side_threads(demo_config(overrides=["device=cuda"])) is None


def test_fast_recipe_is_not_the_shipped_one() -> None:
    assert shipped_models(demo_config(fast=True)) is None


shipped = pytest.mark.skipif(not (ASSETS / MANIFEST).is_file(), reason="no shipped demo weights in this checkout")


@shipped
def test_shipped_weights_load_and_fit_the_budget() -> None:
    from derain.checkpoint import load_derainer
    from downstream.detection import load_detector
    from downstream.segmentation import load_segmenter

    paths = shipped_models(DemoConfig())
    assert paths is not None, "the shipped weights were trained with another recipe than DemoConfig's defaults"
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert size <= 30 * 2**20, f"shipped demo weights take {size / 2**20:.1f} MB (budget 30 MB)"
    for kind in ("", "-rain"):
        assert load_detector(paths[f"detector{kind}"]).nc == 6
        assert load_segmenter(paths[f"segmenter{kind}"]).num_classes == 7
    for name in ("mspfn-lite", "prenet"):
        assert load_derainer(paths[name]) is not None


@shipped
def test_altered_shipped_weights_are_refused(tmp_path: Path) -> None:
    copy = tmp_path / "assets"
    shutil.copytree(ASSETS, copy)
    victim = next(f for f in sorted(copy.rglob("*.safetensors")))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(FileNotFoundError, match="--retrain"):
        shipped_models(DemoConfig(), assets=copy)
