"""Tables: recoveries within noise are flagged, bold marks the best as printed, CSV keeps full precision."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from reports.runs import load_runs
from reports.tables import (
    CI_MARK,
    NOISE_MARK,
    Column,
    Table,
    Value,
    _mark_best,
    table_csv,
    table_text,
    task_table,
)


def test_recovery_within_noise_is_na_with_a_footnote(tiny_bench_run: Path) -> None:
    """Runs without bootstrap intervals: a recovery is n/a† when |drop| < min_drop (the old rule)."""
    combined = load_runs(tiny_bench_run)
    combined.results[["ci_low", "ci_high"]] = float("nan")  # as a run made before the bootstrap
    results = pd.read_csv(tiny_bench_run / "results.csv").set_index(["dataset", "severity", "method", "metric"]).value
    for min_drop in (0.0, 0.001, 0.01, 1.0):
        table = task_table(combined, "segmentation", min_drop=min_drop)
        keys = [c.key for c in table.columns]
        finite = 0
        for (ds, sev, method), entries in table.rows:
            if method in ("clean", "rainy"):
                continue
            for metric in ("miou", "pixel_acc"):
                rec = entries[keys.index(f"recovery_{metric}")]
                drop = results[(ds, sev, "rainy", f"drop_{metric}")]
                value = results[(ds, sev, method, f"recovery_{metric}")]
                if pd.isna(value):
                    assert rec.text(2) == "–"
                    continue
                finite += 1
                assert (rec.mark == NOISE_MARK) == (abs(drop) < min_drop)
                assert rec.text(2) == ("n/a" + NOISE_MARK if rec.mark else f"{value:.2f}".replace("-0.00", "0.00"))
                assert rec.mean == value  # the CSV keeps the number either way
        assert finite  # the untrained segmenter's scores move with the rain
        flagged = any(isinstance(e, Value) and e.mark for _, entries in table.rows for e in entries)
        assert flagged == any(NOISE_MARK in f for f in table.footnotes)  # every n/a is explained
        if min_drop in (0.0, 1.0):  # nothing is below 0; every drop of a 0–1 metric is below 1
            assert flagged == (min_drop == 1.0)
    csv = pd.read_csv(io.StringIO(table_csv(task_table(combined, "segmentation", min_drop=1.0))))
    lite = csv[csv.method == "lite"]
    assert lite.recovery_miou_within_noise.all()
    assert lite.recovery_miou.tolist() == [results[("seg", s, "lite", "recovery_miou")] for s in lite.severity]


def test_bootstrap_intervals_decide_what_is_noise(tiny_bench_run: Path) -> None:
    """With intervals: n/a† iff the drop's 95 % interval contains 0 (whatever min_drop); ° on a drop or recovery
    iff the interval of its difference (drop; derained − rainy) contains 0, explained in a footnote."""
    combined = load_runs(tiny_bench_run)
    res = pd.read_csv(tiny_bench_run / "results.csv").set_index(["dataset", "severity", "method", "metric"])

    def contains_zero(key: tuple) -> bool:
        lo, hi = res.loc[key, "ci_low"], res.loc[key, "ci_high"]
        return not (lo > 0 or hi < 0)

    for min_drop in (0.0, 1.0):
        table = task_table(combined, "segmentation", min_drop=min_drop)
        keys = [c.key for c in table.columns]
        for (ds, sev, method), entries in table.rows:
            if sev == "none":
                continue
            drop_noise = contains_zero((ds, sev, "rainy", "drop_miou"))
            if method == "rainy":
                assert entries[keys.index("drop_miou")].noise == drop_noise
                continue
            rec = entries[keys.index("recovery_miou")]
            if not pd.isna(res.loc[(ds, sev, method, "recovery_miou"), "value"]):
                assert (rec.mark == NOISE_MARK) == drop_noise
                assert rec.noise == contains_zero((ds, sev, method, "gain_miou"))
        marked = any(isinstance(e, Value) and e.noise and not e.mark for _, entries in table.rows for e in entries)
        assert marked == any(CI_MARK in f for f in table.footnotes)
    table = task_table(combined, "segmentation")
    keys = [c.key for c in table.columns]
    identity = [e[keys.index("recovery_miou")] for (_, _, m), e in table.rows if m == "identity"]
    assert identity and all(r.noise for r in identity)  # identity = rainy: its gain is exactly 0, always noise


def test_best_is_bold_as_printed_and_ties_are_not_a_win() -> None:
    table = Table("t", "t", ["block", "method"], [Column("a", "a", digits=2), Column("b", "b", digits=2)])
    table.rows = [
        (["x", "clean"], [Value(9.0), Value(9.0)]),
        (["x", "rainy"], [Value(1.001), Value(5.0)]),
        (["x", "m1"], [Value(1.004), Value(5.0)]),
        (["x", "m2"], [Value(0.5), Value(5.0)]),
    ]
    _mark_best(table, 1)
    a = [e[0].best for _, e in table.rows]
    b = [e[1].best for _, e in table.rows]
    assert a == [False, True, True, False]  # 1.00 and 1.00 as printed; clean is the reference, never bold
    assert b == [False, False, False, False]  # all equal: no winner
    assert "1.00" in table_text(table) and "–" not in table_text(table)
    assert Value(0.5, 0.01, n=3).text(2) == "0.50 ± 0.01" and Value(float("nan")).text(2) == "–"
    assert Value(-0.001).text(2) == "0.00" and Value(-0.01).text(2) == "-0.01"
