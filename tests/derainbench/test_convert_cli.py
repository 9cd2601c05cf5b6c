"""``derainbench convert`` end to end on the authors' graph oracle: identical checkpoints from the TF files and
from variables.npz, ``derainbench derain`` on input.png equal to the graph's output up to 8-bit rounding
(fast and literal ConvLSTM), the folder as a ``bench`` derainer, and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from derain.imageio import read_tensor
from derainbench.cli import main

VARIANTS = ("m17n1-u2", "train-u2")


def convert(src: Path, out: Path, *extra: str) -> Path:
    assert main(["convert", str(src), "--out", str(out), *extra]) == 0
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_files_and_npz_give_identical_safetensors(shared_data: Path, tmp_path: Path, variant: str) -> None:
    folder = shared_data / "mspfn_tf_oracle" / variant
    a = convert(folder / "model.ckpt", tmp_path / "from-ckpt")
    b = convert(folder / "variables.npz", tmp_path / "from-npz")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    meta_a, meta_b = (json.loads((d / "model.json").read_text()) for d in (a, b))
    assert meta_a["converted_from"]["format"] == "tf-checkpoint" and meta_b["converted_from"]["format"] == "npz"
    assert (meta_a["name"], meta_a["config"]) == (meta_b["name"], meta_b["config"])


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "literal"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_derain_cli_on_input_png_equals_the_graph(shared_data: Path, tmp_path: Path, variant: str,
                                                  fast: bool) -> None:
    """The PNG written by ``derain`` vs the graph's output: within half an 8-bit level of the exact value
    (our writer rounds; the float difference is ~1e-6), i.e. ≤ 1/255 on [-1, 1]."""
    folder = shared_data / "mspfn_tf_oracle" / variant
    ckpt = convert(folder / "model.ckpt", tmp_path / "ckpt")
    if not fast:  # the literal ConvLSTM: a model option, set in the checkpoint's config like any other
        meta = json.loads((ckpt / "model.json").read_text())
        meta["config"]["fast"] = False
        (ckpt / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    assert main(["derain", "--model", str(ckpt), "--input", str(folder / "input.png"), "--output", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    with np.load(folder / "io.npz") as io:
        exact = (torch.from_numpy(io["output"][0]).permute(2, 0, 1).flip(0) + 1) / 2  # RGB, [0, 1], unclipped
    png = read_tensor(out / "input.png")
    assert (png - exact.clamp(0, 1)).abs().max().item() <= 0.5 / 255 + 1e-5
    levels = (png * 255).round() - (exact.clamp(0, 1) * 255).round()
    assert levels.abs().max().item() <= 1  # a level apart only where the exact value sits on a rounding edge
    assert (levels != 0).float().mean().item() < 1e-3


def test_converted_checkpoint_is_a_bench_derainer(shared_data: Path, tiny_bench: dict[str, Any],
                                                  tmp_path: Path) -> None:
    from eval.bench import run_bench

    ckpt = convert(shared_data / "mspfn_tf_oracle" / "m17n1-u2" / "model.ckpt", tmp_path / "official")
    cfg = tiny_bench["config"](tmp_path / "run", "severities=[heavy]",
                               f"derainers=[{{name: mspfn-official, model: {ckpt}}}]")
    run = run_bench(cfg, progress=False)
    results = pd.read_csv(run / "results.csv")
    rows = results[results.method == "mspfn-official"]
    assert set(rows.dataset) == {"det", "seg"} and {"psnr_y", "map", "miou"} <= set(rows.metric)
    scores = rows[rows.metric.isin(["psnr_y", "ssim_y", "map", "miou"])]  # recoveries are NaN: zero drop
    assert len(scores) == 6 and np.isfinite(scores.value).all()


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(tmp_path / "epoch44"), "--out", str(tmp_path / "x")]) == 1
    assert "neither a variables .npz nor a TF checkpoint" in capsys.readouterr().err
    (tmp_path / "ckpt").mkdir()
    for f in ("model.json", "model.safetensors"):
        (tmp_path / "ckpt" / f).write_text("{}")
    assert main(["convert", str(tmp_path / "epoch44"), "--out", str(tmp_path / "ckpt")]) == 1
    assert "already holds a checkpoint; pass --force" in capsys.readouterr().err
