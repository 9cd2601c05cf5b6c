"""Loading and combining run folders: clear errors, seeds aggregated as mean ± std, methods side by side."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from eval.bench import run_bench
from reports.runs import load_run, load_runs
from reports.tables import main_table_text, task_table


@pytest.fixture(scope="module")
def seed1_run(tiny_bench: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny benchmark's segmentation at heavy rain again with rain seed 1 (kept small: 4 cells, no samples)."""
    out = tmp_path_factory.mktemp("seed1") / "run-seed1"
    root = tiny_bench["root"]
    seg = f"{{name: seg, task: segmentation, format: masks, path: {root}/scenes/seg, model: {root}/seg-model}}"
    cfg = tiny_bench["config"](out, "seed=1", "samples=0", "severities=[heavy]", f"datasets=[{seg}]")
    return run_bench(cfg, progress=False)


def copy_run(run: Path, dest: Path, **changes: object) -> Path:
    """A copy of a run folder whose config.yaml gets ``changes`` (dotted keys into lists: derainers.1.model)."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("samples", "predictions", "report*"))
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    for key, value in changes.items():
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dest


def test_seeds_are_aggregated_as_mean_and_std(tiny_bench_run: Path, seed1_run: Path) -> None:
    combined = load_runs([tiny_bench_run, seed1_run])
    assert combined.seeds == [0, 1] and combined.max_n == 2
    a, b = (
        pd.read_csv(p / "results.csv").set_index(["dataset", "severity", "method", "metric"]).value
        for p in (tiny_bench_run, seed1_run)
    )
    key = ("seg", "heavy", "lite", "psnr_y")
    mean, std, n = combined.value(*key)
    assert a[key] != b[key]  # another rain seed, other rain
    assert (mean, n) == (pytest.approx((a[key] + b[key]) / 2), 2)
    assert std == pytest.approx(abs(a[key] - b[key]) / 2**0.5)  # sample std of two values
    assert combined.value("det", "heavy", "lite", "map")[2] == 1  # only seed 0 scored det
    # the clean images do not depend on the seed: one value, no spread
    assert combined.value("seg", "none", "clean", "miou")[2] == 1
    text = main_table_text(combined)
    assert "±" in text and "Mean ± std over 2 rain seeds" in text
    assert max(len(line) for line in text.splitlines() if "±" in line) <= 100
    table = task_table(combined, "segmentation")
    assert any(e.n == 2 for _, entries in table.rows for e in entries)


def test_methods_of_different_runs_sit_side_by_side(tiny_bench_run: Path, tmp_path: Path) -> None:
    other = copy_run(tiny_bench_run, tmp_path / "other", name="other", **{"derainers.1.model": "elsewhere/lite"})
    combined = load_runs([tiny_bench_run, other])
    # "lite" names two different models: each keeps its run's name; identity is the same model in both
    assert combined.methods == ["clean", "rainy", "identity", "lite (bench)", "lite (other)"]
    assert combined.value("det", "heavy", "lite (bench)", "map50")[2] == 1


def test_runs_scoring_a_dataset_differently_cannot_be_combined(tiny_bench_run: Path, tmp_path: Path) -> None:
    other = copy_run(tiny_bench_run, tmp_path / "other", **{"datasets.1.model": "another-segmenter"})
    with pytest.raises(ValueError, match=r"score dataset 'seg' differently \(model: .*cannot be combined"):
        load_runs([tiny_bench_run, other])
    with pytest.raises(ValueError, match="given twice"):
        load_runs([tiny_bench_run, tiny_bench_run])


def test_bad_run_folders_say_what_to_do(tiny_bench_run: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        load_run(tmp_path / "nope")
    (tmp_path / "cells").mkdir()
    with pytest.raises(FileNotFoundError, match=r"results.csv not found \(no cell finished yet\).*derainbench bench"):
        load_run(tmp_path)
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"results.csv: columns \['dataset'.*missing"):
        load_run(tmp_path)
    no_config = copy_run(tiny_bench_run, tmp_path / "no-config")
    (no_config / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="config.yaml not found"):
        load_run(no_config)


def test_per_class_rows_come_from_cells_when_the_csv_is_missing(tiny_bench_run: Path, tmp_path: Path) -> None:
    old = copy_run(tiny_bench_run, tmp_path / "old")
    (old / "per_class.csv").unlink()
    a, b = load_run(tiny_bench_run).per_class, load_run(old).per_class
    key = ["dataset", "severity", "method", "class", "metric"]
    merged = a.merge(b, on=key, suffixes=("_csv", "_cells"))
    assert len(merged) == len(a) == len(b)
    assert merged.value_csv.fillna(-1).tolist() == pytest.approx(merged.value_cells.fillna(-1).tolist())


@pytest.mark.parametrize("row", ["seg,segmentation,model,heavy,lite,miou,abc,,,,",
                                 "seg,segmentation,model,heavy,lite,miou,0.5,,,,two"])
def test_a_garbage_results_row_is_named(tiny_bench_run: Path, tmp_path: Path, row: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A hand-edited results.csv fails in one line naming the file and row (was a pandas TypeError or silence)."""
    from derainbench.cli import main

    run = copy_run(tiny_bench_run, tmp_path / "run")
    with open(run / "results.csv", "a") as fh:
        fh.write(row + "\n")
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 1
    err = capsys.readouterr().err.strip()
    assert "results.csv:" in err and "not a number" in err and "\n" not in err, err
