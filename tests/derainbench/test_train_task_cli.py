"""``derainbench train-task`` trains both task models offline on generated scenes, and they load back."""

from __future__ import annotations

from pathlib import Path

import pytest

from derainbench.cli import main
from downstream.scenes import generate_scenes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, n=8, size=64, seed=0, progress=False)
    return root


def test_train_segmenter(scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from downstream.segmentation import load_segmenter

    assert main(["train-task", "--config", str(CONFIGS / "task_segmentation.yaml"), f"data={scenes / 'seg'}",
                 "recipe.iters=3", "batch=2", "recipe.crop=32", "device=cpu", f"out={tmp_path}",
                 "--no-progress"]) == 0
    assert "best segmentation model" in capsys.readouterr().out
    seg = load_segmenter(tmp_path / "best")
    assert "iters: 3" in (tmp_path / "config.yaml").read_text()  # the run records its config
    assert seg.num_classes == len((scenes / "seg/classes.txt").read_text().split())


def test_train_detector(scenes: Path, tmp_path: Path) -> None:
    from downstream.detection import load_detector

    assert main(["train-task", "task=detection", f"data={scenes / 'det/data.yaml'}", "recipe.epochs=1",
                 "recipe.imgsz=64", "batch=4", "device=cpu", f"out={tmp_path}",
                 "recipe.yolo.warmup_epochs=0", "recipe.yolo.mosaic=0"]) == 0
    pts = sorted(tmp_path.rglob("best.pt"))
    assert pts, "no best.pt written"
    assert load_detector(pts[0]).nc == 6


def test_train_instance_segmenter(scenes: Path, tmp_path: Path) -> None:
    from downstream.instance import load_instance_segmenter

    assert main(["train-task", "--config", str(CONFIGS / "task_instance.yaml"), f"data={scenes / 'inst/data.yaml'}",
                 "recipe.epochs=1", "recipe.imgsz=64", "batch=4", "device=cpu", f"out={tmp_path}",
                 "--no-progress"]) == 0
    pts = sorted(tmp_path.rglob("best.pt"))
    assert pts, "no best.pt written"
    segmenter = load_instance_segmenter(pts[0])
    assert segmenter.nc == 6 and "instance" in (tmp_path / "config.yaml").read_text()


def test_missing_data_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train-task", "task=detection", f"data={tmp_path / 'none.yaml'}", "device=cpu",
                 f"out={tmp_path}"]) == 1
    assert "none.yaml" in capsys.readouterr().err
    assert main(["train-task", "data=x"]) == 1
    assert "task is required: one of detection, instance, segmentation" in capsys.readouterr().err
    assert main(["train-task", "task=depth", "data=x"]) == 1
    assert "unknown task 'depth'" in capsys.readouterr().err
    assert main(["train-task", "task=segmentation", "recipe.iterz=3"]) == 1
    assert "recipe.iterz" in capsys.readouterr().err
