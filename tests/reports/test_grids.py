"""Qualitative grids: ground truth first, conditions as the task model saw them, per-image scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from downstream.datasets import read_mask
from downstream.drawing import display_boxes
from downstream.tasks import get_task
from reports.grids import grid_panels, image_task_score
from reports.runs import load_runs


def test_grid_rows_hold_truth_then_every_condition(tiny_bench_run: Path) -> None:
    combined = load_runs(tiny_bench_run)
    for dataset, score in (("det", "AP@.5"), ("seg", "mIoU")):
        stems, rows = grid_panels(combined, dataset, "heavy", images=5)
        assert len(stems) == 2  # the run saved two sample images
        for row in rows:
            assert [p.title for p in row] == ["ground truth", "clean", "rainy", "identity", "lite"]
            clean, rainy, identity, lite = row[1:]
            assert "PSNR-Y" not in clean.caption and score in clean.caption
            assert "PSNR-Y" in rainy.caption and score in lite.caption
            assert identity.caption == rainy.caption  # the identity derainer returns the rainy image
            np.testing.assert_array_equal(identity.image, rainy.image)
            assert not np.array_equal(rainy.image, clean.image)


def test_a_perfect_prediction_scores_one(tiny_bench_run: Path) -> None:
    truth = json.loads(next((tiny_bench_run / "samples/det/truth").glob("*.json")).read_text())
    perfect = {**truth, "scores": [1.0] * len(truth["classes"])}
    names = [str(i) for i in range(6)]
    if truth["classes"]:
        assert image_task_score(get_task("detection"), perfect, truth, names) == ("AP@.5", pytest.approx(1.0))
    mask = read_mask(next((tiny_bench_run / "samples/seg/truth").glob("*.mask.png")))
    seg, seg_names = get_task("segmentation"), [str(i) for i in range(int(mask.max()) + 2)]
    assert image_task_score(seg, mask, mask, seg_names) == ("mIoU", pytest.approx(1.0))
    wrong = (mask + 1) % int(mask.max() + 2)
    assert image_task_score(seg, wrong, mask, seg_names)[1] == pytest.approx(0.0)
    assert image_task_score(seg, None, mask, seg_names) is None  # no saved prediction: no score


def test_display_boxes_skip_duplicates_of_any_class() -> None:
    pred = {
        "boxes": [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]],
        "scores": [0.9, 0.8, 0.5, 0.95],
        "classes": [0, 1, 2, 3],
    }
    shown = display_boxes(pred, k=5)
    assert shown["classes"] == [3, 2] and shown["scores"] == [0.95, 0.5]
    assert display_boxes(pred, k=1)["classes"] == [3]


def test_display_boxes_hide_low_confidence() -> None:
    """Grids draw detections from the display confidence up (default 0.25); scoring is not affected."""
    pred = {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], "scores": [0.9, 0.24, 0.03],
            "classes": [0, 1, 2]}
    assert display_boxes(pred, k=5)["classes"] == [0]
    assert display_boxes(pred, k=5, conf=0.0)["classes"] == [0, 1, 2]
    assert display_boxes(pred, k=5, conf=0.95)["classes"] == []
    truth = {"boxes": [[0, 0, 10, 10]], "classes": [4]}  # no scores: always drawn
    assert display_boxes(truth, k=5)["classes"] == [4]


def test_a_report_over_two_runs_keeps_each_runs_grids(tiny_bench: dict, tiny_bench_run: Path, tmp_path: Path) -> None:
    """A later run with its own dataset and another rain seed: its grid is drawn from its own samples (the first
    run has none of that dataset), every column from the same run, so the rain is the same in each."""
    from eval.bench import run_bench
    from reports.build import make_figures
    from reports.runs import load_runs

    root = tiny_bench["root"]
    cfg = tiny_bench["config"](tmp_path / "later", "seed=1", "severities=[heavy]", "samples=2", "bootstrap=0",
                               f"datasets=[{{name: seg2, task: segmentation, format: masks, path: {root}/scenes/seg, "
                               f"model: {root}/seg-model}}]", "derainers=[{name: identity, model: identity}]")
    later = run_bench(cfg, progress=False)
    combined = load_runs([tiny_bench_run, later])
    stems, rows = grid_panels(combined, "seg2", "heavy", images=5)
    assert len(stems) == 2
    for row in rows:
        assert [p.title for p in row] == ["ground truth", "clean", "rainy", "identity"]
        np.testing.assert_array_equal(row[3].image, row[2].image)  # identity of the very rain shown as rainy
    names = {f.path.name for f in make_figures(combined, tmp_path / "report", images=2)}
    assert {"grid_seg2_heavy.png", "grid_seg_heavy.png", "grid_det_light.png"} <= names
