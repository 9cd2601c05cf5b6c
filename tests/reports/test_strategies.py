"""The strategies figure: one bar per strategy and condition, on an axis that starts at 0."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import reports.plots
from reports.runs import load_runs
from reports.strategies import strategies, strategies_figure


def _two_model(tiny_bench_run: Path):  # noqa: ANN202
    """The tiny run's results as if scored by two task models (strategies need two)."""
    combined = load_runs(tiny_bench_run)
    s = combined.strategies
    combined.strategies = pd.concat([s, s.assign(task_model="second")], ignore_index=True)  # two task models
    return combined


def test_strategies_figure_bars_start_at_zero_even_when_every_score_is_zero(tiny_bench_run: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A detector that finds nothing (every mAP 0, e.g. two epochs of training) still gets an axis from 0 up."""
    combined = _two_model(tiny_bench_run)
    combined.strategies[["mean", "ci_low", "ci_high"]] = 0.0
    figures = []
    monkeypatch.setattr(reports.plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    dataset = next(iter(combined.datasets))
    assert strategies_figure(combined, dataset, tmp_path / "s.png") is not None
    [ax] = figures[0].axes
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 0
    assert len(ax.patches) == len(strategies(combined, dataset)) * len(ax.get_xticks())  # one bar each


def test_a_derainers_mpc_mark_reads_its_mpc_gain_even_when_the_gap_is_zero(tiny_bench_run: Path) -> None:
    """The mPC column's ° of a derainer row reads gain_<m>_pc (mPC derained − mPC rainy): with every score 0 the
    gap closed is undefined, but that gain is 0 with a zero-width interval, so the row is within noise."""
    from reports.strategies import _value

    combined = _two_model(tiny_bench_run)
    dataset = next(iter(combined.datasets))
    s = combined.strategies
    assert (s.metric.str.startswith("gain_") & s.metric.str.endswith("_pc")).any()  # the bench writes the rows
    s[["mean", "ci_low", "ci_high"]] = 0.0
    s.loc[s.metric.str.endswith("_gap_closed"), ["mean", "ci_low", "ci_high"]] = float("nan")  # 0 / 0, as written
    metric = next(m for m in s.metric if m.endswith("_pc") and not m.startswith("gain_"))
    rows = [r for r in strategies(combined, dataset) if r.method != "rainy"]
    assert rows
    for row in rows:
        value, _ = _value(combined, dataset, row, "mean", metric)
        assert value.noise  # ° as in the severity columns
