"""The bench's cell fingerprints carry the rain preset's version (eval/bench.py cell_fingerprint)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from eval.bench import BenchConfig, run_bench


def _heavy_segmentation_run(setup: dict, out: Path) -> BenchConfig:
    """The segmentation scenes under heavy rain only, no samples, no intervals."""
    root = setup["root"]
    return setup["config"](out, "severities=[heavy]", "samples=0", "bootstrap=0",
                           f"datasets=[{{name: seg, task: segmentation, format: masks, path: {root}/scenes/seg, "
                           f"model: {root}/seg-model}}]")


def test_cells_of_a_preset_that_moved_to_another_version_are_recomputed(
        tiny_bench: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``heavy`` pointing at a new version recomputes its rain cells, even when only the version name differs."""
    import derain.synth as synth

    cfg = _heavy_segmentation_run(tiny_bench, tmp_path / "run")
    run_bench(cfg, progress=False)
    capsys.readouterr()
    run_bench(cfg, progress=False)
    assert "recomputing" not in capsys.readouterr().out
    renamed = dataclasses.replace(synth.PRESETS["heavy"], name="heavy@v99")  # the same rain, another version
    monkeypatch.setitem(synth.PRESETS, "heavy", renamed)
    run_bench(cfg, progress=False)
    assert "recomputing 3 finished cell(s)" in capsys.readouterr().out  # rainy, identity, mspfn-lite; not clean
    monkeypatch.setitem(synth.PRESETS, "heavy", synth.PRESETS["heavy@v1"])  # the 0.2.0 rain
    run_bench(cfg, progress=False)
    assert "recomputing 3 finished cell(s)" in capsys.readouterr().out
