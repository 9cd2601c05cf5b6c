"""``derainbench scenes`` through the CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from derainbench import cli
from downstream.datasets import YoloDetectionDataset


def test_scenes_cli_writes_loadable_sets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "scenes"
    assert cli.main(["scenes", "--n", "4", "--size", "48", "--seed", "1", "--no-progress", str(out)]) == 0
    assert "wrote 4 scenes" in capsys.readouterr().out
    assert len(YoloDetectionDataset(out / "det" / "data.yaml", "train")) == 3
    assert (out / "seg" / "val" / "masks").is_dir()
    assert cli.main(["scenes", "--n", "4", "--size", "48", "--no-progress", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["scenes", "--n", "2", "--size", "48", "--no-progress", "--overwrite", str(out)]) == 0


def test_scenes_cli_help_explains_layout(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["scenes", "--help"])
    text = capsys.readouterr().out
    assert "det/data.yaml" in text and "instances_{train,val}.json" in text and "seg/classes.txt" in text


def test_scenes_cli_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["scenes", "--n", "1", "--no-progress", str(tmp_path)]) == 1
    assert "at least 2 scenes" in capsys.readouterr().err
