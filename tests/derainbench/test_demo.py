"""The main job, shrunk (``--fast``): every stage runs, results are tidy, reruns reuse, and it is deterministic."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from derainbench.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--fast", "--out", str(out), "--device", "cpu"]) == 0
    return out


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_demo_writes_every_stage(demo_dir: Path) -> None:
    rows = read_rows(demo_dir / "results.csv")
    assert {r["method"] for r in rows} == {"rainy", "mspfn-lite"}
    assert {r["severity"] for r in rows} == {"light", "heavy"}
    assert {r["metric"] for r in rows} == {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}
    values = {(r["severity"], r["method"], r["metric"]): float(r["value"]) for r in rows}
    # rain hurts more at heavy severity
    assert values[("heavy", "rainy", "psnr_y")] < values[("light", "rainy", "psnr_y")] - 5
    clean = sorted(p.name for p in (demo_dir / "data/clean").glob("*.png"))
    assert clean and sorted(p.name for p in (demo_dir / "derained/mspfn-lite/heavy").glob("*.png")) == clean
    assert (demo_dir / "train/mspfn-lite-demo/best/model.safetensors").is_file()
    assert all((demo_dir / "data/light" / name).with_suffix(".rain.json").is_file() for name in clean)


def test_demo_rerun_reuses_stages(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (demo_dir / "results.csv").read_text()
    assert main(["demo", "--fast", "--out", str(demo_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier") == 3
    assert (demo_dir / "results.csv").read_text() == before


def test_demo_is_deterministic(demo_dir: Path, tmp_path: Path) -> None:
    assert main(["demo", "--fast", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert (tmp_path / "results.csv").read_text() == (demo_dir / "results.csv").read_text()
