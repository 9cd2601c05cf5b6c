"""The command line as a whole: every sub-command answers --help, and the top-level help stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

from derainbench import cli


def test_top_level_help_imports_no_torch() -> None:
    """Only the invoked sub-command's module is imported, so `derainbench --help` needs no torch (0.05 s vs 2.8 s)."""
    code = ("import sys\nfrom derainbench.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'ultralytics', 'scipy', 'skimage') if m in sys.modules]\n"
            "print('heavy:', heavy, file=sys.stderr)\nsys.exit(1 if heavy else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in cli.COMMANDS:
        assert name in done.stdout


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_sub_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: derainbench {name}" in capsys.readouterr().out


def test_unknown_command_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["nosuch"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err and "train-task" in err


@pytest.mark.parametrize("name", ["train", "joint"])
def test_overwrite_help_lists_what_it_deletes(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--overwrite's help names exactly the files the trainer deletes (``run_files``)."""
    import re

    from derain.train import Trainer
    from downstream.joint import JointTrainer

    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    listed = re.search(r"deletes what a run writes there \(([^)]*)\) and nothing else", text)
    assert listed, text
    trainer = Trainer if name == "train" else JointTrainer
    assert [f.strip().rstrip("/") for f in listed.group(1).split(",")] == list(trainer.run_files)
