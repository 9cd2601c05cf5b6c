"""Build a report from one or several benchmark runs: tables (Markdown, HTML, LaTeX, CSV), figures and grids.

Layout of the output folder::

    report.md, report.html       the report (the HTML embeds its figures: one file that opens offline)
    tables/<name>.csv            every table: runs, datasets, methods, restoration, detection, segmentation
    tables/<name>.tex            the result tables for a paper (booktabs)
    figures/*.png                metric vs severity, PSNR vs task metric, per-class bars, training curves, grids
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from derain.fileio import atomic_write_text
from downstream.drawing import DISPLAY_CONF, DISPLAY_IOU
from downstream.tasks import get_task
from reports import grids, plots
from reports.document import Block, Bullets, Figure, Heading, Paragraph, TableBlock
from reports.html import render_html
from reports.latex import table_latex
from reports.markdown import render_markdown
from reports.runs import Combined, load_runs
from reports.stats import primary_metric, psnr_task_correlation
from reports.strategies import strategies_figure, strategies_tables
from reports.summary import summary_tables
from reports.tables import (
    MIN_DROP,
    PROTOCOL,
    Table,
    metric_name,
    restoration_table,
    robustness_tables,
    slug,
    task_tables,
    write_csv,
)
from reports.training import find_training_logs

FORMATS = ("md", "html", "tex", "csv")
TITLE = "derainbench report"
GRIDS_TEXT = (
    "Per sample image (rows): the ground truth, then each condition exactly as the task model saw it (clean, rainy, "
    "each derainer's output). {drawing} Under each panel: PSNR-Y / SSIM-Y against the clean image and the task score "
    "of that single image ({scores}), which is noisy: the tables hold the dataset scores."
)


def grids_text(tasks: Sequence[str], conf: float) -> str:
    """The grids' caption: how each task of the report draws its predictions and scores one image."""
    found = [get_task(t) for t in tasks]
    drawing = " ".join(f"{t.title}: {t.grid_text.format(conf=conf, iou=DISPLAY_IOU)}" for t in found)
    return GRIDS_TEXT.format(drawing=drawing, scores=" or ".join(dict.fromkeys(t.image_metric.heading for t in found)))


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    out: Path
    files: list[Path]
    combined: Combined

    @property
    def markdown(self) -> Path:
        return self.out / "report.md"

    @property
    def html(self) -> Path:
        return self.out / "report.html"


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"md,html"`` or a list → validated format names; an unknown one is an error listing the valid ones."""
    items = [f.strip().lower() for f in (text.split(",") if isinstance(text, str) else text) if f.strip()]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ValueError(f"unknown report format(s) {bad or items}; choose from {','.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


def default_out(run_dirs: Sequence[str | Path]) -> Path:
    """``RUN_DIR/report`` for one run; ``<common parent>/report`` for several."""
    paths = [Path(d) for d in run_dirs]
    if len(paths) == 1:
        return paths[0] / "report"
    return Path(os.path.commonpath([p.resolve() for p in paths])) / "report"


def build_report(
    run_dirs: str | Path | Iterable[str | Path],
    out: str | Path | None = None,
    formats: str | Sequence[str] = FORMATS,
    images: int = 3,
    min_drop: float = MIN_DROP,
    display_conf: float = DISPLAY_CONF,
) -> Report:
    """Load and combine the runs, then write the report files under ``out`` (see the module docstring).

    ``images``: sample images per qualitative grid; ``display_conf``: detections drawn in the grids from this
    confidence up (scores keep every box); ``min_drop``: smallest |clean − rainy| drop for which a
    recovery is shown (smaller drops are within noise and their recovery prints as n/a).
    """
    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    formats = parse_formats(formats)
    combined = load_runs(dirs)
    out = Path(out) if out is not None else default_out(dirs)
    if any(out.resolve() == Path(d).resolve() for d in dirs):
        raise ValueError(f"--out {out} is a run folder; write the report into a folder of its own (e.g. {out}/report)")
    summary = summary_tables(combined)
    results = [restoration_table(combined), *task_tables(combined, min_drop), *robustness_tables(combined, min_drop),
               *strategies_tables(combined)]
    files: list[Path] = []
    if "csv" in formats:
        files += [write_csv(t, out / "tables") for t in [*summary, *results]]
    if "tex" in formats:
        for table in results:
            atomic_write_text(out / "tables" / f"{table.name}.tex", table_latex(table))
            files.append(out / "tables" / f"{table.name}.tex")
    if "md" in formats or "html" in formats:
        figures = make_figures(combined, out, images, display_conf)
        files += [out / f.path for f in figures]
        blocks = report_blocks(combined, summary, results, figures, formats, display_conf)
        if "md" in formats:
            atomic_write_text(out / "report.md", render_markdown(blocks))
            files.append(out / "report.md")
        if "html" in formats:
            atomic_write_text(out / "report.html", render_html(blocks, out, TITLE))
            files.append(out / "report.html")
    return Report(out, files, combined)


def make_figures(
    combined: Combined, out: Path, images: int = 3, display_conf: float = DISPLAY_CONF
) -> list[Figure]:
    """Draw every figure the runs have data for into ``out/figures``; returns them with captions."""
    colors = plots.method_colors(combined.methods)
    folder = out / "figures"
    made: list[Figure] = []

    def add(path: Path | None, caption: str) -> None:
        if path is not None:
            made.append(Figure(path.relative_to(out), caption))

    add(
        plots.metric_vs_severity(combined, colors, folder / "metric_vs_severity.png"),
        "Task metrics against rain severity per method; the dashed line is the clean images' score.",
    )
    add(
        plots.psnr_vs_task(combined, colors, folder / "psnr_vs_task.png"),
        "PSNR-Y against the headline task metric for every method and rain severity (marker = severity); the "
        "correlation over these points is in each title. Rainy inputs are drawn as open markers.",
    )
    add(
        plots.per_class_bars(combined, colors, folder / "per_class.png"),
        "Per-class AP@[.5:.95] (detection) / IoU (segmentation) at each dataset's worst rain severity "
        "(largest clean − rainy drop), clean images for reference.",
    )
    for ds in combined.datasets:
        add(
            strategies_figure(combined, ds, folder / f"strategies_{slug(ds)}.png"),
            f"{ds}: the strategies against rain (rows of its strategies table) per condition, with 95 % "
            "paired-bootstrap intervals; hatched: a rain-trained task model (//) or a jointly tuned derainer (xx).",
        )
    logs = find_training_logs(combined)
    add(
        plots.training_curves(logs, colors, folder / "training_curves.png"),
        "Training logs found in or linked from the runs: "
        + ", ".join(f"{log.label} ({log.path})" for log in logs)
        + ".",
    )
    for ds in combined.datasets:
        for sev in combined.rain_severities():
            add(
                grids.sample_grid(
                    combined, ds, sev, folder / f"grid_{slug(ds)}_{slug(sev)}.png", images, display_conf
                ),
                f"{ds}, {sev} rain.",
            )
    return made



def report_blocks(
    combined: Combined,
    summary: list[Table],
    results: list[Table],
    figures: list[Figure],
    formats: Sequence[str],
    display_conf: float = DISPLAY_CONF,
) -> list[Block]:
    """The report's sections in reading order."""
    runs = ", ".join(f"{r.name} ({r.path})" for r in combined.runs)
    tasks = list(dict.fromkeys(combined.datasets.values()))
    blocks: list[Block] = [
        Heading(TITLE, 1),
        Paragraph(
            f"Built from {len(combined.runs)} benchmark run(s): {runs}. Restoration metrics: {PROTOCOL}. "
            + " ".join(f"{t.title}: {t.protocol_text}." for t in map(get_task, tasks))
        ),
        Heading("Configuration"),
        *(TableBlock(t) for t in summary),
        Heading("Results"),
        *(TableBlock(t) for t in results),
    ]
    by_name = {f.path.name: f for f in figures}
    plots_ = [by_name[n] for n in ("metric_vs_severity.png", "psnr_vs_task.png", "per_class.png") if n in by_name]
    plots_ += [f for f in figures if f.path.name.startswith("strategies_")]
    if plots_:
        blocks.append(Heading("Figures"))
        for fig in plots_:
            if fig.path.name == "psnr_vs_task.png":
                blocks.append(Paragraph("Does restoration quality predict task quality? " + _correlations(combined)))
            blocks.append(fig)
    blocks.append(Heading("Training"))
    training = by_name.get("training_curves.png")
    blocks.append(
        training
        if training
        else Paragraph(
            "No training log (log.csv from `derainbench train` or `derainbench joint`) was found in the runs or next "
            "to the derainer checkpoints their configs name."
        )
    )
    grid_figs = [f for f in figures if f.path.name.startswith("grid_")]
    blocks.append(Heading("Qualitative examples"))
    blocks += (
        [Paragraph(grids_text(tasks, display_conf)), *grid_figs]
        if grid_figs
        else [Paragraph("The runs saved no sample images (bench config `samples: 0`).")]
    )
    blocks.append(Heading("Files"))
    listed = [f"tables/{t.name}.csv" for t in [*summary, *results]] if "csv" in formats else []
    listed += [f"tables/{t.name}.tex (booktabs)" for t in results] if "tex" in formats else []
    listed += [f.path.as_posix() for f in figures]
    blocks.append(Bullets(listed))
    return blocks


def _correlations(combined: Combined) -> str:
    parts = []
    for ds, task in combined.datasets.items():
        metric = primary_metric(task)
        parts.append(f"{ds}: PSNR-Y vs {metric_name(metric)}: {psnr_task_correlation(combined, ds, metric).text()}.")
    return " ".join(parts) + (
        " The points span rain severities, so a high correlation mostly says that heavier "
        "rain hurts both; compare methods within a severity in the tables above."
    )
