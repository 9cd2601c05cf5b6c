"""The report's tables built from combined runs: restoration (PSNR/SSIM), detection and segmentation (task
metric, drop, recovery), the run summary, and the compact main table for a terminal; CSV and plain-text output.

A table is a list of rows of :class:`Value` (numbers: mean, std over seeds, bold when best, a footnote mark) or
plain strings, under :class:`Column` headers; Markdown, HTML and LaTeX renderers live in their own modules.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from derain.fileio import atomic_write_text
from derain.synth import PRESETS
from downstream.tasks import get_task, list_tasks, metric_specs
from eval.bench import SUMMARY_SEVERITY, task_metrics
from eval.bootstrap import excludes_zero
from reports.runs import Combined, is_finite, load_runs

PROTOCOL = "Y channel, MATLAB rgb2ycbcr, no crop"
RESTORATION_METRICS = {"psnr_y": ("PSNR-Y", "PSNR-Y (dB)"), "ssim_y": ("SSIM-Y", "SSIM-Y")}  # (heading, name)


def slug(text: str) -> str:
    """``text`` as a file-name part (table and figure names): letters, digits, ``-`` and ``_`` kept, the rest ``-``."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def metric_label(key: str) -> str:
    """A metric's column heading ("mAP", "PSNR-Y"): restoration metrics here, task metrics from their task."""
    if key in RESTORATION_METRICS:
        return RESTORATION_METRICS[key][0]
    spec = metric_specs().get(key)
    return spec.heading if spec else key


def metric_name(key: str) -> str:
    """A metric's full name ("mAP@[.5:.95]", "PSNR-Y (dB)")."""
    if key in RESTORATION_METRICS:
        return RESTORATION_METRICS[key][1]
    spec = metric_specs().get(key)
    return spec.label if spec else key


NOISE_MARK = "†"  # a recovery (gap closed) whose denominator, the drop (the average gap), is within noise
UNDEFINED_MARK = "‡"  # rPC where the clean score is 0
CI_MARK = "°"  # a difference whose 95 % paired-bootstrap interval contains 0
MIN_DROP = 0.01  # |clean − rainy| below this (metric units, 0–1 scale) makes a recovery meaningless


@dataclass
class Column:
    """A table column: ``key`` names it in CSV, ``label`` heads it under an optional spanning ``group``."""

    key: str
    label: str
    group: str = ""
    digits: int = 3
    best: bool = True  # bold the highest value of each block of rows
    numeric: bool = True  # right-aligned numbers (text columns are left-aligned)


@dataclass
class Value:
    """One number of a table: mean (and std over ``n`` seeds), ``mark`` = footnote mark when not meaningful."""

    mean: float | None
    std: float | None = None
    n: int = 1
    mark: str = ""
    best: bool = False
    noise: bool = False  # a difference whose 95 % interval contains 0: printed with CI_MARK

    def text(self, digits: int, pm: str = "±") -> str:
        """The number as printed: ``0.103``, ``0.103 ± 0.004``, ``0.004°``, ``n/a†`` or ``–`` when missing."""
        if self.mark:
            return f"n/a{self.mark}"
        if not is_finite(self.mean):
            return "–"
        s = _fixed(self.mean, digits)
        s = f"{s} {pm} {_fixed(self.std, digits)}" if self.n > 1 and is_finite(self.std) else s
        return s + (CI_MARK if self.noise else "")


Entry = Value | str


def _fixed(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals and no minus sign on a value that rounds to zero."""
    s = f"{x:.{digits}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


@dataclass
class Table:
    """A titled table with index columns (strings), value columns, rows and footnotes."""

    name: str  # file stem of its CSV / LaTeX export
    title: str
    index: list[str]
    columns: list[Column]
    rows: list[tuple[list[str], list[Entry]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed under the title (protocol, what bold means)
    footnotes: list[str] = field(default_factory=list)

    @property
    def headers(self) -> list[str]:
        """Flat column headers: ``group label`` when grouped."""
        return [*self.index, *(f"{c.group} {c.label}".strip() for c in self.columns)]

    def group_spans(self) -> list[tuple[str, int]]:
        """Consecutive columns sharing a group, as (group, width), for spanning header cells."""
        spans: list[tuple[str, int]] = []
        for col in self.columns:
            if spans and spans[-1][0] == col.group:
                spans[-1] = (col.group, spans[-1][1] + 1)
            else:
                spans.append((col.group, 1))
        return spans

    def display_index(self) -> list[list[str]]:
        """Index cells with a value repeated from the row above left blank, for reading."""
        out, previous = [], None
        for keys, _ in self.rows:
            shown = [k if previous is None or keys[: i + 1] != previous[: i + 1] else "" for i, k in enumerate(keys)]
            out.append(shown)
            previous = keys
        return out


def drop_within_noise(combined: Combined, dataset: str, severity: str, metric: str, min_drop: float = MIN_DROP) -> bool:
    """True when the clean − rainy drop is too small to divide by: its 95 % paired-bootstrap interval contains 0
    (runs with intervals), else |drop| < ``min_drop`` or < 2 × its std over seeds."""
    drop = combined.value(dataset, severity, "rainy", f"drop_{metric}")
    return _within_noise(drop, combined.interval(dataset, severity, "rainy", f"drop_{metric}"), min_drop)


def gap_within_noise(combined: Combined, dataset: str, metric: str, min_drop: float = MIN_DROP) -> bool:
    """:func:`drop_within_noise` for the robustness summary: the average gap P_clean − mPC of rainy (``<m>_gap``)
    that gap closed divides by. Runs made before that row: the gap from P_clean and rainy's mPC, without interval."""
    gap = combined.value(dataset, SUMMARY_SEVERITY, "rainy", f"{metric}_gap")
    if gap is not None:
        return _within_noise(gap, combined.interval(dataset, SUMMARY_SEVERITY, "rainy", f"{metric}_gap"), min_drop)
    clean = combined.value(dataset, "none", "clean", metric)
    pc = combined.value(dataset, SUMMARY_SEVERITY, "rainy", f"{metric}_pc")
    if clean is None or pc is None:
        return True
    return _within_noise((clean[0] - pc[0], pc[1], pc[2]), None, min_drop)  # P_clean does not vary with the seed


def _within_noise(diff: tuple[float, float, int] | None, ci: tuple[float, float] | None, min_drop: float) -> bool:
    """The noise rule of a denominator ``(mean, std over seeds, seeds)``: its interval contains 0 where there is
    one, else |mean| < ``min_drop`` or < 2 × std; a missing or non-finite one is noise too."""
    if diff is None or not is_finite(diff[0]):
        return True
    if ci is not None:
        return not excludes_zero(ci)
    mean, std, n = diff
    return abs(mean) < min_drop or (n > 1 and is_finite(std) and abs(mean) < 2 * std)


def _value(combined: Combined, dataset: str, severity: str, method: str, metric: str) -> Value:
    """One table number; drops and recoveries carry CI_MARK when the interval of the difference behind them (the
    drop; the gain derained − rainy) contains 0."""
    hit = combined.value(dataset, severity, method, metric)
    if hit is None:
        return Value(None)
    value = Value(hit[0], hit[1], hit[2])
    kind, _, base = metric.partition("_")
    behind = {"drop": f"drop_{base}", "recovery": f"gain_{base}"}.get(kind)
    if metric.endswith("_gap_closed"):  # robustness: the share of the gap closed is itself a difference
        behind = metric
    if behind and base:
        ci = combined.interval(dataset, severity, method, behind)
        value.noise = ci is not None and not excludes_zero(ci)
    return value


def ci_note(table: Table, short: bool = False) -> list[str]:
    """The footnote for CI_MARK, when the table printed one (``short``: fits a 100-column terminal)."""
    if not any(isinstance(e, Value) and e.noise and not e.mark for _, entries in table.rows for e in entries):
        return []
    if short:
        return [f"{CI_MARK} within noise: the 95 % bootstrap interval of the difference contains 0"]
    return [
        f"{CI_MARK} within noise: the 95 % paired-bootstrap interval over images of this difference (the drop, "
        "or derained − rainy behind a recovery) contains 0."
    ]


def _mark_best(table: Table, block_of: int) -> None:
    """Bold the highest value (as printed) per column within blocks of rows sharing their first ``block_of`` index
    cells; clean rows are the reference, not a contender, and a block where all values tie gets no bold."""
    blocks: dict[tuple[str, ...], list[list[Entry]]] = {}
    for keys, entries in table.rows:
        if keys[-1] != "clean":
            blocks.setdefault(tuple(keys[:block_of]), []).append(entries)
    for rows in blocks.values():
        for j, col in enumerate(table.columns):
            values = [r[j] for r in rows if isinstance(r[j], Value) and not r[j].mark and is_finite(r[j].mean)]
            shown = [round(v.mean, col.digits) for v in values]  # ties as printed: equal-looking numbers agree
            if not col.best or len(set(shown)) < 2:
                continue  # nothing to choose from: bold would single out no winner
            for v, x in zip(values, shown, strict=True):
                v.best = x == max(shown)


def seeds_note(combined: Combined) -> list[str]:
    """The footnote explaining mean ± std when values were aggregated over seeds."""
    if combined.max_n < 2:
        return []
    return [
        f"Mean ± std over {combined.max_n} rain seeds ({', '.join(map(str, combined.seeds))}); clean rows do not "
        "depend on the seed."
    ]


def restoration_table(combined: Combined) -> Table:
    """PSNR-Y / SSIM-Y per dataset × method (rows) and severity (column groups); rainy = the input, no deraining."""
    pairs = [(s, m) for s in combined.rain_severities() for m in ("psnr_y", "ssim_y")]
    columns = [
        Column(
            f"{s}/{m}", metric_label(m) + (" (dB)" if m == "psnr_y" else ""), group=s, digits=2 if m == "psnr_y" else 4
        )
        for s, m in pairs
    ]
    table = Table(
        "restoration",
        f"Restoration quality (PSNR/SSIM: {PROTOCOL})",
        ["dataset", "method"],
        columns,
        notes=[
            f"PSNR-Y and SSIM-Y of each method's output against the clean image ({PROTOCOL}); "
            "rainy = the rain-synthesized input, not derained. Bold: best per column and dataset."
        ],
    )
    for ds in combined.datasets:
        for method in [m for m in combined.methods if m != "clean"]:
            entries: list[Entry] = [_value(combined, ds, s, method, m) for s, m in pairs]
            if any(isinstance(e, Value) and is_finite(e.mean) for e in entries):
                table.rows.append(([ds, method], entries))
    _mark_best(table, 1)
    table.footnotes = seeds_note(combined)
    unpaired = real_rain_datasets(combined)
    if unpaired:
        table.footnotes.append(
            f"No PSNR/SSIM for {', '.join(unpaired)}: real rain without clean images, so there is nothing to compare "
            "the outputs with (their task scores are in the task tables)."
        )
    return table


def real_rain_datasets(combined: Combined) -> list[str]:
    """Datasets without a clean row (labelled real rain): no PSNR/SSIM, drop or recovery exist for them."""
    return [
        ds
        for ds, task in combined.datasets.items()
        if combined.value(ds, "none", "clean", task_metrics(task)[0]) is None
    ]


def shown_metrics(combined: Combined, task: str, datasets: Iterable[str] | None = None) -> list[str]:
    """``task``'s dataset metrics that the runs hold for ``datasets`` (default: the task's): the headline always,
    the others where scored (VOC's devkit AP exists for VOC sets only)."""
    keys = task_metrics(task)
    names = [d for d, t in combined.datasets.items() if t == task] if datasets is None else list(datasets)
    held = set(combined.results.loc[combined.results["dataset"].isin(names), "metric"])
    return [m for k, m in enumerate(keys) if k == 0 or m in held]


VOC_PROTOCOL = ("VOC mAP50 all-pt = the Pascal VOC devkit's AP@.5 with all-point interpolation (VOC2010+), VOC07 "
                "mAP50 11-pt = its 11-point interpolation (VOC2007); both: detections ranked by score over the whole "
                "set per class, each matched to its highest-IoU object (IoU ≥ 0.5, the devkit's inclusive-pixel "
                "boxes), difficult objects neither hits nor misses, mean over the classes with objects. mAP and "
                "mAP@.5 are COCO's (pycocotools) on the same predictions, difficult objects as crowd regions.")


def task_table(combined: Combined, task: str, min_drop: float = MIN_DROP) -> Table:
    """Task metrics per dataset × severity × method with drop (rainy rows) and recovery (derained rows)."""
    metrics = shown_metrics(combined, task)
    columns = [Column(m, metric_label(m)) for m in metrics]
    columns += [Column(f"drop_{m}", metric_label(m), group="drop", best=False) for m in metrics]
    columns += [Column(f"recovery_{m}", metric_label(m), group="recovery", digits=2) for m in metrics]
    names = ", ".join(f"{metric_label(m)} = {metric_name(m)}" for m in metrics if metric_label(m) != metric_name(m))
    table = Table(
        task,
        f"{get_task(task).title} ({', '.join(metric_label(m) for m in metrics)}, drop, recovery)",
        ["dataset", "severity", "method"],
        columns,
        notes=[
            f"drop = clean − rainy; recovery = (derained − rainy) / (clean − rainy): 1 undoes all of the "
            f"rain's damage, 0 none, < 0 makes it worse.{' ' + names + '.' if names else ''} "
            "Bold: best per column among the rainy and derained rows of each dataset and severity."
        ],
    )
    if any(m.startswith(("voc_", "voc07_")) for m in metrics):
        table.notes.append(VOC_PROTOCOL)
    noisy = False
    for ds in [d for d, t in combined.datasets.items() if t == task]:
        for sev in combined.severities_of(ds):
            for method in combined.methods_of(ds, sev):
                entries: list[Entry] = [_value(combined, ds, sev, method, m) for m in metrics]
                entries += [_value(combined, ds, sev, method, f"drop_{m}") for m in metrics]
                for m in metrics:
                    rec = _value(combined, ds, sev, method, f"recovery_{m}")
                    if is_finite(rec.mean) and drop_within_noise(combined, ds, sev, m, min_drop):
                        rec.mark, noisy = NOISE_MARK, True
                    entries.append(rec)
                table.rows.append(([ds, sev, method], entries))
    _mark_best(table, 2)
    if noisy:
        seeds = ", or < 2 × its std over seeds" if combined.max_n > 1 else ""
        table.footnotes.append(
            f"{NOISE_MARK} n/a: the drop at this severity is within noise (its 95 % bootstrap interval contains 0; "
            f"runs without intervals: |drop| < {min_drop:g}{seeds}), so recovery would divide by almost zero; the CSV "
            "keeps the number and flags it."
        )
    table.footnotes += ci_note(table) + seeds_note(combined)
    return table


def robustness_table(combined: Combined, task: str, min_drop: float = MIN_DROP) -> Table | None:
    """mPC, rPC and gap closed per dataset × method for ``task``'s metrics (the robustness-benchmark summary);
    None when the runs hold no summary rows for it. A gap closed over an average gap within noise is n/a† (the
    rule of the recoveries, :func:`gap_within_noise`), an rPC over a clean score of 0 n/a‡."""
    metrics = shown_metrics(combined, task)
    columns = []
    for m in metrics:
        columns += [
            Column(f"{m}_pc", "mPC", group=metric_label(m)),
            Column(f"{m}_rpc", "rPC", group=metric_label(m)),
            Column(f"{m}_gap_closed", "gap closed", group=metric_label(m), digits=2),
        ]
    table = Table(
        f"robustness_{task}",
        f"{get_task(task).title}: robustness over rain severities (mPC, rPC, gap closed)",
        ["dataset", "method"],
        columns,
        notes=[
            "mPC = the metric averaged over the run's rain severities (levels 1–5: Michaelis et al. 2019); the clean "
            "row holds P_clean. rPC = mPC / P_clean. gap closed = (mPC − mPC of rainy) / (P_clean − mPC of rainy): "
            "the share of the average damage a derainer undoes. Bold: best per column and dataset."
        ],
    )
    for ds in [d for d, t in combined.datasets.items() if t == task]:
        for method in combined.methods:
            entries = _robustness_entries(combined, ds, method, metrics, min_drop)
            if any(isinstance(e, Value) and (is_finite(e.mean) or e.mark) for e in entries):
                table.rows.append(([ds, method], entries))
    if not any(keys[1] != "clean" for keys, _ in table.rows):
        return None
    _mark_best(table, 1)
    table.footnotes += robustness_notes(table, combined, min_drop) + ci_note(table) + seeds_note(combined)
    return table


def _robustness_entries(combined: Combined, ds: str, method: str, metrics: Iterable[str],
                        min_drop: float = MIN_DROP) -> list[Entry]:
    """mPC, rPC and gap closed of each metric for one method; the clean row holds P_clean, 1 and nothing. rPC is
    n/a‡ where P_clean is 0 (undefined), gap closed n/a† where the average gap is within noise."""
    entries: list[Entry] = []
    for m in metrics:
        clean = _value(combined, ds, "none", "clean", m)
        undefined = is_finite(clean.mean) and clean.mean == 0
        if method == "clean":
            rpc = Value(None) if not is_finite(clean.mean) else Value(1.0)
            entries += [clean, rpc, Value(None)]
        else:
            rpc, closed = (_value(combined, ds, SUMMARY_SEVERITY, method, f"{m}_{k}") for k in ("rpc", "gap_closed"))
            if is_finite(closed.mean) and gap_within_noise(combined, ds, m, min_drop):
                closed.mark = NOISE_MARK
            entries += [_value(combined, ds, SUMMARY_SEVERITY, method, f"{m}_pc"), rpc, closed]
        if undefined and (method == "clean" or not is_finite(entries[-2].mean)):
            entries[-2] = Value(None, mark=UNDEFINED_MARK)
    return entries


def robustness_notes(table: Table, combined: Combined, min_drop: float = MIN_DROP, short: bool = False) -> list[str]:
    """The footnotes for the n/a marks a robustness table printed (``short``: fits a 100-column terminal)."""
    marks = {e.mark for _, entries in table.rows for e in entries if isinstance(e, Value)}
    notes = []
    if NOISE_MARK in marks:
        seeds = ", or < 2 × its std over seeds" if combined.max_n > 1 else ""
        notes.append(
            f"{NOISE_MARK} gap within noise (95 % interval contains 0, or |gap| < {min_drop:g} without intervals): "
            "gap closed not meaningful"
            if short
            else f"{NOISE_MARK} n/a: the average gap P_clean − mPC of rainy is within noise (its 95 % bootstrap "
            f"interval contains 0; runs without intervals: |gap| < {min_drop:g}{seeds}), so gap closed would divide "
            "by almost zero, as a recovery over a drop within noise; the CSV keeps the number and flags it."
        )
    if UNDEFINED_MARK in marks:
        notes.append(f"{UNDEFINED_MARK} n/a: rPC = mPC / P_clean is undefined where the clean score is 0.")
    return notes


def synthetic_severities(combined: Combined) -> list[str]:
    """The rain severities mPC averages over: the synthesizer's presets, not a dataset's own rain sources."""
    return [s for s in combined.rain_severities() if s in PRESETS]


def robustness_tables(combined: Combined, min_drop: float = MIN_DROP) -> list[Table]:
    """One robustness table per task with summary rows (detection first)."""
    tasks = set(combined.datasets.values())
    tables = [robustness_table(combined, t, min_drop) for t in list_tasks() if t in tasks]
    return [t for t in tables if t is not None]


def task_tables(combined: Combined, min_drop: float = MIN_DROP) -> list[Table]:
    """One task table per task present in the runs (detection first)."""
    tasks = set(combined.datasets.values())
    return [task_table(combined, t, min_drop) for t in list_tasks() if t in tasks]


def table_csv(table: Table) -> str:
    """The table as CSV with full-precision numbers: ``<key>`` (mean), ``<key>_std`` and ``<key>_n`` when
    aggregated over seeds, ``<key>_within_noise`` for recoveries (gaps closed) flagged as meaningless; an undefined
    value (n/a‡) is an empty cell."""
    seeds = any(isinstance(e, Value) and e.n > 1 for _, entries in table.rows for e in entries)
    flagged = {j for _, entries in table.rows for j, e in enumerate(entries)
               if isinstance(e, Value) and e.mark == NOISE_MARK}
    header = list(table.index)
    for j, col in enumerate(table.columns):
        header += [col.key] + ([f"{col.key}_std", f"{col.key}_n"] if seeds else [])
        header += [f"{col.key}_within_noise"] if j in flagged else []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for keys, entries in table.rows:
        row: list[object] = list(keys)
        for j, e in enumerate(entries):
            if isinstance(e, str):
                row += [e] + (["", ""] if seeds else [])
            else:
                row += [_num(e.mean)] + ([_num(e.std), e.n] if seeds else [])
            if j in flagged:
                row.append(isinstance(e, Value) and e.mark == NOISE_MARK)
        writer.writerow(row)
    return buf.getvalue()


def _num(x: float | None) -> str:
    return repr(float(x)) if is_finite(x) else ""


def write_csv(table: Table, folder: Path) -> Path:
    """Write ``<folder>/<table.name>.csv``; returns its path."""
    path = Path(folder) / f"{table.name}.csv"
    atomic_write_text(path, table_csv(table))
    return path


def table_text(table: Table, title: bool = True) -> str:
    """The table as aligned plain text (for terminals and logs)."""
    cells = [
        [
            *shown,
            *(e if isinstance(e, str) else e.text(c.digits, "±") for e, c in zip(entries, table.columns, strict=True)),
        ]
        for shown, (_, entries) in zip(table.display_index(), table.rows, strict=True)
    ]
    headers = table.headers
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    k = len(table.index)
    fmt = [str.rjust if i >= k and table.columns[i - k].numeric else str.ljust for i in range(len(headers))]
    lines = ["  ".join(f(h, w) for f, h, w in zip(fmt, headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(f(c, w) for f, c, w in zip(fmt, r, widths, strict=True)).rstrip() for r in cells]
    head = [table.title] if title else []
    return "\n".join([*head, *lines, *table.footnotes])


def main_tables(combined: Combined, min_drop: float = MIN_DROP) -> list[Table]:
    """Per dataset: severity × method with the task metrics, PSNR-Y (dB), and drop / recovery of the headline metric."""
    tables = []
    for ds, task in combined.datasets.items():
        metrics = shown_metrics(combined, task, [ds])
        first = metrics[0]
        columns = [Column(m, metric_label(m)) for m in metrics]
        columns += [
            Column("psnr_y", "PSNR-Y", digits=2),
            Column(f"drop_{first}", f"drop {metric_label(first)}", best=False),
            Column(f"recovery_{first}", f"recov. {metric_label(first)}", digits=2),
        ]
        table = Table(f"main_{ds}", f"{ds} ({task}; PSNR-Y in dB: {PROTOCOL})", ["severity", "method"], columns)
        noisy = False
        for sev in combined.severities_of(ds):
            for method in combined.methods_of(ds, sev):
                entries: list[Entry] = [_value(combined, ds, sev, method, c.key) for c in columns]
                rec = entries[-1]
                if (
                    isinstance(rec, Value)
                    and is_finite(rec.mean)
                    and drop_within_noise(combined, ds, sev, first, min_drop)
                ):
                    rec.mark, noisy = NOISE_MARK, True
                table.rows.append(([sev, method], entries))
        if ds in real_rain_datasets(combined):
            table.footnotes.append("real rain without clean images: no PSNR-Y, drop or recovery")
        if noisy:
            table.footnotes.append(
                f"{NOISE_MARK} drop within noise (95 % interval contains 0, or |drop| < {min_drop:g} "
                "without intervals): recovery not meaningful"
            )
        table.footnotes += ci_note(table, short=True) + seeds_note(combined)
        tables.append(table)
    return tables


def main_robustness_tables(combined: Combined, min_drop: float = MIN_DROP) -> list[Table]:
    """Per dataset with robustness rows: mPC, rPC and gap closed of the headline metric."""
    tables = []
    for ds, task in combined.datasets.items():
        m = task_metrics(task)[0]
        label = metric_label(m)
        columns = [
            Column(f"{m}_pc", f"mPC {label}"),
            Column(f"{m}_rpc", "rPC"),
            Column(f"{m}_gap_closed", "gap closed", digits=2),
        ]
        table = Table(
            f"main_robustness_{ds}",
            f"{ds}: over all {len(synthetic_severities(combined))} rain severities",
            ["method"],
            columns,
        )
        for method in combined.methods:
            entries = _robustness_entries(combined, ds, method, [m], min_drop)
            if any(isinstance(e, Value) and (is_finite(e.mean) or e.mark) for e in entries):
                table.rows.append(([method], entries))
        if any(keys[0] != "clean" for keys, _ in table.rows):
            table.footnotes = robustness_notes(table, combined, min_drop, short=True) + ci_note(table, short=True)
            tables.append(table)
    return tables


def main_table_text(run_dirs: str | Path | Iterable[str | Path] | Combined, min_drop: float = MIN_DROP) -> str:
    """The main result per dataset / severity / method as plain text for a terminal (100 columns; the strategies
    table, with its intervals, is wider): task metrics,
    PSNR-Y, and drop / recovery of the headline metric, then the robustness summary (mPC, rPC, gap closed) and,
    where a dataset has several task models or a jointly tuned derainer, the strategies table. Takes run folders or
    already combined runs."""
    from reports.strategies import strategies_table  # it builds on this module's tables

    combined = run_dirs if isinstance(run_dirs, Combined) else load_runs(run_dirs)
    robust = {t.name.removeprefix("main_robustness_"): t for t in main_robustness_tables(combined, min_drop)}
    parts = []
    for table in main_tables(combined, min_drop):
        parts.append(table_text(table))
        ds = table.name.removeprefix("main_")
        for extra in (robust.get(ds), strategies_table(combined, ds) if ds in combined.datasets else None):
            if extra is not None:
                parts.append(table_text(extra))
    return "\n\n".join(parts)
