"""The strategies figure: one bar per strategy and condition, on an axis that starts at 0."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import reports.plots
from reports.runs import load_runs
from reports.strategies import strategies, strategies_figure


def test_strategies_figure_bars_start_at_zero_even_when_every_score_is_zero(tiny_bench_run: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A detector that finds nothing (every mAP 0, e.g. two epochs of training) still gets an axis from 0 up."""
    combined = load_runs(tiny_bench_run)
    s = combined.strategies
    combined.strategies = pd.concat([s, s.assign(task_model="second")], ignore_index=True)  # two task models
    combined.strategies[["mean", "ci_low", "ci_high"]] = 0.0
    figures = []
    monkeypatch.setattr(reports.plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    dataset = next(iter(combined.datasets))
    assert strategies_figure(combined, dataset, tmp_path / "s.png") is not None
    [ax] = figures[0].axes
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 0
    assert len(ax.patches) == len(strategies(combined, dataset)) * len(ax.get_xticks())  # one bar each
