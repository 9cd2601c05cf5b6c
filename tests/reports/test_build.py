"""A report built from a real (tiny) benchmark run: every file, the numbers of results.csv, decodable figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from derainbench.cli import main
from reports.build import build_report, parse_formats
from reports.grids import grid_panels
from reports.tables import main_table_text

TABLES = ["runs", "datasets", "methods", "restoration", "detection", "segmentation"]
RESULT_TABLES = ["restoration", "detection", "segmentation"]


@pytest.fixture(scope="module")
def report(tiny_bench_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    assert main(["report", str(tiny_bench_run), "--out", str(out), "--images", "2", "--quiet"]) == 0
    return out


def test_report_writes_every_file(report: Path) -> None:
    expected = [
        "report.md",
        "report.html",
        *(f"tables/{t}.csv" for t in TABLES),
        *(f"tables/{t}.tex" for t in RESULT_TABLES),
        *(f"figures/{f}.png" for f in ["metric_vs_severity", "psnr_vs_task", "per_class"]),
        *(f"figures/grid_{ds}_{sev}.png" for ds in ("det", "seg") for sev in ("light", "heavy")),
    ]
    missing = [f for f in expected if not (report / f).is_file()]
    assert not missing
    md = (report / "report.md").read_text()
    for figure in (report / "figures").glob("*.png"):
        assert f"figures/{figure.name}" in md
    assert "Y channel, MATLAB rgb2ycbcr, no crop" in md
    assert "No training log" in md  # the tiny run has none


def test_figures_decode_at_a_legible_size(report: Path) -> None:
    for path in (report / "figures").glob("*.png"):
        with Image.open(path) as im:
            im.load()
            w, h = im.size
            dpi = im.info.get("dpi", (0, 0))[0]
        assert 600 <= w <= 4000 and 250 <= h <= 4000, (path.name, im.size)
        assert dpi == pytest.approx(150, abs=1), path.name


def test_tables_hold_the_numbers_of_results_csv(report: Path, tiny_bench_run: Path) -> None:
    results = pd.read_csv(tiny_bench_run / "results.csv")
    det = pd.read_csv(report / "tables/detection.csv").set_index(["dataset", "severity", "method"])
    seg = pd.read_csv(report / "tables/segmentation.csv").set_index(["dataset", "severity", "method"])
    rest = pd.read_csv(report / "tables/restoration.csv").set_index(["dataset", "method"])
    robust = {task: pd.read_csv(report / f"tables/robustness_{task}.csv").set_index(["dataset", "method"])
              for task in ("detection", "segmentation")}
    checked = 0
    for r in results.itertuples():
        if r.metric.startswith("gain_") or r.metric.endswith("_gap"):  # derained − rainy, clean − mPC of rainy:
            # behind the recovery (gap closed) columns and their noise marks
            checked += 1
            continue
        if r.severity == "mean":  # the robustness summary: mPC, rPC, gap closed
            got = robust[r.task].loc[(r.dataset, r.method), r.metric]
        elif r.metric in ("psnr_y", "ssim_y"):
            got = rest.loc[(r.dataset, r.method), f"{r.severity}/{r.metric}"]
        else:
            got = (det if r.task == "detection" else seg).loc[(r.dataset, r.severity, r.method), r.metric]
        assert got == pytest.approx(r.value, nan_ok=True), r
        checked += 1
    assert checked == len(results)
    # the Markdown and LaTeX tables print the same numbers, rounded
    md, tex = (report / "report.md").read_text(), (report / "tables/restoration.tex").read_text()
    heavy_lite = results[(results.dataset == "seg") & (results.severity == "heavy") & (results.method == "lite")]
    psnr = heavy_lite.set_index("metric").value["psnr_y"]
    assert f"{psnr:.2f}" in md and f"{psnr:.2f}" in tex
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\cmidrule" in tex


def test_html_is_self_contained(report: Path) -> None:
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((report / "figures").glob("*.png")))
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)  # nothing to fetch, nothing beside it needed
    assert "<b>" in html  # best values bold


def test_best_values_are_bold_within_each_severity(report: Path, tiny_bench_run: Path) -> None:
    results = pd.read_csv(tiny_bench_run / "results.csv")
    md = (report / "report.md").read_text()
    table = md.split("**Restoration quality")[1].split("\n\n")[2]
    for ds in ("det", "seg"):
        psnr = results[(results.dataset == ds) & (results.severity == "heavy") & (results.metric == "psnr_y")]
        best = psnr.set_index("method").value.drop("clean", errors="ignore")
        if best.round(2).nunique() > 1:
            assert f"**{best.max():.2f}**" in table
            assert f"**{best.min():.2f}**" not in table


def test_formats_choose_the_outputs(tiny_bench_run: Path, tmp_path: Path) -> None:
    report = build_report(tiny_bench_run, out=tmp_path / "r", formats="csv,tex")
    assert {p.suffix for p in report.files} == {".csv", ".tex"}
    assert not (tmp_path / "r/figures").exists() and not (tmp_path / "r/report.md").exists()
    with pytest.raises(ValueError, match="unknown report format.*md,html,tex,csv"):
        parse_formats("md,pdf")


def test_main_table_fits_a_terminal(tiny_bench_run: Path) -> None:
    text = main_table_text(tiny_bench_run)
    assert max(len(line) for line in text.splitlines()) <= 100
    results = pd.read_csv(tiny_bench_run / "results.csv")
    clean = results[(results.dataset == "det") & (results.method == "clean") & (results.metric == "map")].value
    assert f"{clean.iloc[0]:.3f}" in text
    assert "det (detection" in text and "seg (segmentation" in text


def test_cli_help_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "mean ± std" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "results.csv not found" in err and "derainbench bench" in err


def test_report_of_a_real_rain_dataset_says_why_psnr_is_absent(tiny_bench: dict, tmp_path: Path) -> None:
    from eval.bench import run_bench

    root = tiny_bench["root"]
    cfg = tiny_bench["config"](tmp_path / "run", f"datasets=[{{name: seg, task: segmentation, format: masks, "
                               f"path: {root}/scenes/seg, model: {root}/seg-model, real_rain: real}}]", "samples=1")
    run = run_bench(cfg, progress=False)
    report = build_report(run, tmp_path / "report", formats="md,csv")
    md = (report.out / "report.md").read_text()
    assert "No PSNR/SSIM for seg: real rain without clean images" in md
    assert "real rain without clean images: no PSNR-Y, drop or recovery" in main_table_text(run)
    # the images scored, from the real-rain cells (there is no clean cell), and the grid of the saved samples
    n = json.loads((run / "cells/seg__real__rainy.json").read_text())["n"]
    datasets = pd.read_csv(report.out / "tables/datasets.csv", dtype=str).set_index("dataset")
    assert datasets.loc["seg", "images"] == str(n) and n > 0
    assert (run / "samples/seg/real/rainy").is_dir()
    assert "figures/grid_seg_real.png" in md
    stems, rows = grid_panels(report.combined, "seg", "real", images=3)
    assert stems and all([p.title for p in row] == ["ground truth", "rainy", "identity", "lite"] for row in rows)
    assert all(p.caption.startswith("mIoU") for row in rows for p in row[1:])  # no PSNR-Y: no clean image
