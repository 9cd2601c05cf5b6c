"""``derainbench score`` end to end through ``derainbench.cli.main``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from derain.imageio import read_tensor
from derain.metrics import compute_metrics
from derainbench.cli import main

PROTOCOL = "Y = MATLAB rgb2ycbcr, no border crop"


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """pred/ and gt/ with three real photo crops; pred = gt + seeded noise."""
    rng = np.random.default_rng(0)
    crops = {"img2": data.astronaut()[:48, :64], "img10": data.coffee()[:40, :56], "img1": data.chelsea()[:45, :51]}
    for name, gt in crops.items():
        noisy = np.clip(gt + rng.normal(0, 10, gt.shape), 0, 255).astype(np.uint8)
        save_png(tmp_path / "gt" / f"{name}.png", gt)
        save_png(tmp_path / "pred" / f"{name}.png", noisy)
    return tmp_path / "pred", tmp_path / "gt"


def expected_means(pred: Path, gt: Path, crop_border: int = 0) -> dict[str, float]:
    values = [compute_metrics(read_tensor(p), read_tensor(gt / p.name), crop_border)
              for p in sorted(pred.glob("*.png"))]
    return {k: float(np.mean([float(v[k]) for v in values])) for k in values[0]}


def test_json_is_the_only_stdout(folders, capsys) -> None:
    pred, gt = folders
    assert main(["score", "--pred", str(pred), "--gt", str(gt), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    got = json.loads(out)
    assert set(got) == {"n", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"} and got["n"] == 3
    assert got == pytest.approx({"n": 3, **expected_means(pred, gt)}, abs=1e-9)


def test_table_and_csv(folders, tmp_path: Path, capsys) -> None:
    pred, gt = folders
    out_csv = tmp_path / "res" / "scores.csv"
    assert main(["score", "--pred", str(pred), "--gt", str(gt), "--out", str(out_csv)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert PROTOCOL in lines[0]
    assert lines[1].split() == ["name", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"]
    assert [ln.split()[0] for ln in lines[2:]] == ["img1", "img2", "img10", "mean"]  # natural order
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["img1", "img2", "img10", "mean"]
    means = expected_means(pred, gt)
    for key, value in means.items():
        assert float(rows[-1][key]) == pytest.approx(value, abs=1e-6)
        assert float(lines[-1].split()[1 + list(means).index(key)]) == pytest.approx(value, abs=1e-3)
    single = compute_metrics(read_tensor(pred / "img10.png"), read_tensor(gt / "img10.png"))
    assert float(rows[2]["psnr_y"]) == pytest.approx(float(single["psnr_y"]), abs=1e-6)


def test_crop_border(folders, capsys) -> None:
    pred, gt = folders
    assert main(["score", "--pred", str(pred), "--gt", str(gt), "--crop-border", "4"]) == 0
    assert "4-px border crop" in capsys.readouterr().out
    assert main(["score", "--pred", str(pred), "--gt", str(gt), "--crop-border", "4", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["psnr_y"] == pytest.approx(expected_means(pred, gt, 4)["psnr_y"], abs=1e-9)
    assert got["psnr_y"] != pytest.approx(expected_means(pred, gt)["psnr_y"], abs=1e-6)


def test_pairs_root_scores_the_rainy_input(folders, tmp_path: Path, capsys) -> None:
    pred, gt = folders
    root = tmp_path / "paired"
    for p in pred.glob("*.png"):
        (root / "rain").mkdir(parents=True, exist_ok=True)
        (root / "norain").mkdir(parents=True, exist_ok=True)
        (root / "rain" / f"rain-{p.name}").write_bytes(p.read_bytes())
        (root / "norain" / f"norain-{p.name}").write_bytes((gt / p.name).read_bytes())
    assert main(["score", "--pairs", str(root), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == pytest.approx({"n": 3, **expected_means(pred, gt)}, abs=1e-9)
    # a derainer's output keeping the rainy names scores against norain/ too (prefix ignored)
    assert main(["score", "--pred", str(root / "rain"), "--gt", str(root / "norain"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3


def test_missing_and_mismatched_files_are_named(folders, capsys) -> None:
    pred, gt = folders
    (pred / "img2.png").unlink()
    assert main(["score", "--pred", str(pred), "--gt", str(gt)]) == 1
    captured = capsys.readouterr()
    assert "img2.png: no pred image" in captured.err and captured.out == ""
    save_png(pred / "img2.png", np.zeros((10, 10, 3), np.uint8))
    assert main(["score", "--pred", str(pred), "--gt", str(gt), "--json"]) == 1
    err = capsys.readouterr().err
    assert "size mismatch" in err and "img2.png" in err and "--skip-bad on the command line" in err
    with pytest.warns(UserWarning, match="skipped 1 bad pair"):  # the flag the hint names exists
        assert main(["score", "--pred", str(pred), "--gt", str(gt), "--json", "--skip-bad"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2
    assert main(["score", "--pred", str(pred)]) == 1
    assert "--gt" in capsys.readouterr().err
    assert main(["score", "--pairs", str(pred), "--pred", str(pred)]) == 1
    assert "not both" in capsys.readouterr().err


def test_help_states_the_protocol(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["score", "--help"])
    assert exc.value.code == 0
    assert PROTOCOL in capsys.readouterr().out


def test_rain100l_through_the_cli(shared_data, capsys) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-image ops: one thread is fastest on a shared CPU
    try:
        assert main(["score", "--pairs", str(shared_data / "Rain100L"), "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    got = json.loads(capsys.readouterr().out)
    assert got["n"] == 100
    assert got["psnr_y"] == pytest.approx(26.900, abs=5e-4)
    assert got["ssim_y"] == pytest.approx(0.8383, abs=5e-5)
