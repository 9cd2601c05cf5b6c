"""Training logs that belong to a report: ``log.csv`` files (derain and joint training write one per run folder,
columns step, loss, ..., val_psnr_y, val_<task metric>) inside a run folder or next to a derainer checkpoint the
run's config points at (``<run>/train/<name>/best`` → ``<run>/train/<name>/log.csv``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reports.runs import Combined, Run

LOG_NAME = "log.csv"
SKIP_DIRS = {"cells", "samples", "predictions"}


@dataclass
class TrainingLog:
    """One training log: who it belongs to (a method label when a derainer links it), where, and its rows."""

    label: str
    method: str | None
    path: Path
    frame: pd.DataFrame


def read_log(path: Path) -> pd.DataFrame | None:
    """The log's rows sorted by step, or None when the file is not a training log (no ``step`` column)."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    if "step" not in frame.columns or frame.empty:
        return None
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


def _logs_inside(run: Run) -> list[Path]:
    """``log.csv`` in the run folder and up to two levels below it (report output folders excluded)."""
    found = []
    for pattern in (LOG_NAME, f"*/{LOG_NAME}", f"*/*/{LOG_NAME}"):
        for path in sorted(run.path.glob(pattern)):
            parts = path.relative_to(run.path).parts[:-1]
            if SKIP_DIRS & set(parts) or (parts and (run.path / parts[0] / "report.md").is_file()):
                continue
            found.append(path)
    return found


def _linked_log(run: Run, model: str) -> Path | None:
    """The log next to a derainer checkpoint folder named in the config (relative paths: to the working directory,
    then to the run folder)."""
    for base in (Path.cwd(), run.path):
        folder = Path(model) if Path(model).is_absolute() else base / model
        if folder.is_dir():
            for candidate in (folder / LOG_NAME, folder.parent / LOG_NAME):
                if candidate.is_file():
                    return candidate
    return None


def find_training_logs(combined: Combined) -> list[TrainingLog]:
    """Every distinct training log linked from or stored in the runs, labelled by method where known."""
    logs: dict[Path, TrainingLog] = {}
    for label, sources in combined.sources.items():
        for run, method in sources:
            spec = run.derainer(method)
            path = _linked_log(run, str(spec["model"])) if spec and spec.get("model") else None
            if path is not None and path.resolve() not in logs:
                frame = read_log(path)
                if frame is not None:
                    logs[path.resolve()] = TrainingLog(f"{label} ({path.parent.name})", label, path, frame)
    for run in combined.runs:
        for path in _logs_inside(run):
            if path.resolve() not in logs:
                frame = read_log(path)
                if frame is not None:
                    name = path.parent.relative_to(run.path).as_posix()
                    logs[path.resolve()] = TrainingLog(
                        f"{run.name}/{name}" if name != "." else run.name, None, path, frame
                    )
    return list(logs.values())
