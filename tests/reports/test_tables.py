"""Tables: recoveries within noise are flagged, bold marks the best as printed, CSV keeps full precision."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from reports.runs import CLASS_COLUMNS, Run, combine, load_runs
from reports.tables import (
    CI_MARK,
    NOISE_MARK,
    Column,
    Table,
    Value,
    _mark_best,
    main_table_text,
    robustness_table,
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


def _gap_closed_marks(combined, task: str, metric: str, min_drop: float) -> dict[tuple[str, str], bool]:
    """``(dataset, method) -> gap closed printed n/a†`` of every derainer with a finite gap closed."""
    table = robustness_table(combined, task, min_drop=min_drop)
    j = [c.key for c in table.columns].index(f"{metric}_gap_closed")
    marks = {}
    for (ds, method), entries in table.rows:
        e = entries[j]
        if method not in ("clean", "rainy") and np.isfinite(e.mean):
            marks[(ds, method)] = e.mark == NOISE_MARK
            assert e.text(2) == f"n/a{NOISE_MARK}" or not e.mark
    assert marks
    assert any(marks.values()) == any(f.startswith(NOISE_MARK) for f in table.footnotes)  # every n/a explained
    return marks


def test_gap_closed_over_a_gap_within_noise_is_na_like_a_recovery(tiny_bench_run: Path) -> None:
    """gap closed divides by the mean gap P_clean − mPC of rainy: n/a† when that gap is within noise, by the rule of
    the per-severity recoveries (its 95 % interval contains 0; without intervals |gap| < min_drop)."""
    combined = load_runs(tiny_bench_run)
    res = pd.read_csv(tiny_bench_run / "results.csv").set_index(["dataset", "severity", "method", "metric"])
    for task, ds, metric in (("segmentation", "seg", "miou"), ("segmentation", "seg", "pixel_acc")):
        gap = res.loc[(ds, "mean", "rainy", f"{metric}_gap")]
        assert gap.value == res.loc[(ds, "none", "clean", metric), "value"] - res.loc[(ds, "mean", "rainy",
                                                                                          f"{metric}_pc"), "value"]
        assert np.isfinite(gap.ci_low) and np.isfinite(gap.ci_high)  # its paired-bootstrap interval
        noise = not (gap.ci_low > 0 or gap.ci_high < 0)
        for min_drop in (0.0, 1.0):  # with intervals the interval decides
            assert set(_gap_closed_marks(combined, task, metric, min_drop).values()) == {noise}
    without = load_runs(tiny_bench_run)
    without.results[["ci_low", "ci_high"]] = float("nan")  # a run without intervals
    older = load_runs(tiny_bench_run)
    older.results = older.results[~older.results.metric.str.endswith("_gap")]  # made before the gap rows
    for combined in (without, older):
        assert not any(_gap_closed_marks(combined, "segmentation", "miou", 0.0).values())
        assert all(_gap_closed_marks(combined, "segmentation", "miou", 1.0).values())
    text = main_table_text(without, min_drop=1.0)
    assert "gap closed" in text and f"n/a{NOISE_MARK}" in text.split("seg: over all")[1]


def test_rpc_is_undefined_where_the_clean_score_is_0(tmp_path: Path) -> None:
    """rPC = mPC / P_clean: with P_clean = 0 the clean row is not 1 and no row divides by 0; the footnote says why."""
    rows = [("none", "clean", "miou", 0.0), ("none", "clean", "pixel_acc", 0.5),
            ("light", "rainy", "miou", 0.0), ("light", "rainy", "pixel_acc", 0.4),
            ("light", "x", "miou", 0.1), ("light", "x", "pixel_acc", 0.45),
            ("mean", "rainy", "miou_pc", 0.0), ("mean", "rainy", "miou_rpc", float("nan")),
            ("mean", "x", "miou_pc", 0.1), ("mean", "x", "miou_rpc", float("nan")),
            ("mean", "rainy", "pixel_acc_pc", 0.4), ("mean", "rainy", "pixel_acc_rpc", 0.8),
            ("mean", "x", "pixel_acc_pc", 0.45), ("mean", "x", "pixel_acc_rpc", 0.9)]
    results = pd.DataFrame([{"dataset": "d", "task": "segmentation", "severity": s, "method": m, "metric": k,
                             "value": v} for s, m, k, v in rows])
    run = Run(tmp_path, {"seed": 0}, results, pd.DataFrame(columns=CLASS_COLUMNS), pd.DataFrame(), None, {})
    table = robustness_table(combine([run]), "segmentation")
    keys = [c.key for c in table.columns]
    got = {method: entries for (_, method), entries in table.rows}
    for method in ("clean", "rainy", "x"):
        rpc = got[method][keys.index("miou_rpc")]
        assert rpc.text(3).startswith("n/a") and rpc.text(3) != "n/a" + NOISE_MARK
    assert got["clean"][keys.index("pixel_acc_rpc")].text(3) == "1.000"  # P_clean 0.5: defined
    assert got["x"][keys.index("pixel_acc_rpc")].text(3) == "0.900"
    mark = got["clean"][keys.index("miou_rpc")].text(3).removeprefix("n/a")
    assert any(f.startswith(mark) and "clean score is 0" in f for f in table.footnotes)
    assert "miou_rpc_within_noise" not in table_csv(table)  # undefined, not noise: the CSV cell is empty
