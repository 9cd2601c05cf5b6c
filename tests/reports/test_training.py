"""Training logs: a derain training log next to the checkpoint a run's config names is found and plotted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from derain.config import load_config
from derain.train import TrainConfig, train
from reports.plots import method_colors, training_curves
from reports.runs import load_runs
from reports.training import find_training_logs

TINY = [
    "model.name=mspfn-lite",
    "model.options.channels=8",
    "model.options.cfm_channels=4",
    "model.options.lstm_channels=[4,8,8]",
    "model.options.units=1",
]


@pytest.fixture(scope="module")
def trained(tiny_bench: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 4-step derain training run (log.csv, best/) on the tiny scenes."""
    images = tiny_bench["root"] / "scenes/det/images/train"
    out = tmp_path_factory.mktemp("train")
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"out={out}",
            "name=lite-train",
            "iters=4",
            "batch_size=2",
            "patch_size=24",
            "device=cpu",
            "log_every=1",
            "save_every=2",
            "val_every=2",
            f"train.clean={images}",
            f"val={{clean: {images}, limit: 1, seed: 7}}",
            *TINY,
        ],
    )
    return train(cfg, progress=False).run_dir


def test_log_next_to_a_derainer_checkpoint_is_found_and_plotted(
    tiny_bench_run: Path, trained: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_bench_run, run, ignore=shutil.ignore_patterns("samples", "predictions"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["derainers"][1]["model"] = str(trained / "best")  # "lite" now names the trained checkpoint
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "notes").mkdir()
    (run / "notes/log.csv").write_text("epoch,acc\n1,0.5\n")  # a log.csv that is not a training log: ignored

    combined = load_runs(run)
    logs = find_training_logs(combined)
    assert [(log.method, log.path) for log in logs] == [("lite", trained / "log.csv")]
    frame = logs[0].frame
    assert sorted(set(frame.step)) == [1, 2, 3, 4] and frame.val_psnr_y.notna().sum() == 2  # val rows: steps 2, 4

    path = training_curves(logs, method_colors(combined.methods), tmp_path / "curves.png")
    with Image.open(path) as im:
        assert im.size[0] > 800 and im.size[1] > 250
