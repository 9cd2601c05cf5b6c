"""Small analyses the figures and text share: the worst rain condition and whether PSNR predicts task quality."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from downstream.tasks import get_task
from reports.runs import Combined, is_finite


def primary_metric(task: str) -> str:
    """The task's headline metric (COCO mAP@[.5:.95] for detection, mIoU for segmentation, ...)."""
    return get_task(task).metrics[0].key


def worst_severity(combined: Combined, dataset: str) -> str | None:
    """The rain severity with the largest clean − rainy drop of the headline metric (the last one if none is known)."""
    metric = primary_metric(combined.datasets[dataset])
    severities = [s for s in combined.severities_of(dataset) if s != "none"]
    drops = {s: combined.value(dataset, s, "rainy", f"drop_{metric}") for s in severities}
    known = {s: d[0] for s, d in drops.items() if d is not None and is_finite(d[0])}
    if known:
        return max(known, key=lambda s: known[s])
    return severities[-1] if severities else None


@dataclass
class Correlation:
    """Pearson r and Spearman ρ between PSNR-Y and a task metric over ``n`` (method, severity) points."""

    pearson: float
    spearman: float
    n: int

    def text(self) -> str:
        """``Pearson r = 0.93, Spearman ρ = 0.90 (n = 6)``, or why there is none."""
        if self.n < 3 or not (is_finite(self.pearson) and is_finite(self.spearman)):
            return f"correlation n/a (n = {self.n}: needs 3 or more points that vary)"
        return f"Pearson r = {self.pearson:.2f}, Spearman ρ = {self.spearman:.2f} (n = {self.n})"


def psnr_task_points(combined: Combined, dataset: str, metric: str | None = None) -> pd.DataFrame:
    """One row per (method, rain severity): mean and std of PSNR-Y and of the task metric."""
    metric = metric or primary_metric(combined.datasets[dataset])
    rows = []
    for sev in combined.severities_of(dataset):
        for method in combined.methods_of(dataset, sev):
            psnr, task = combined.value(dataset, sev, method, "psnr_y"), combined.value(dataset, sev, method, metric)
            if psnr and task and is_finite(psnr[0]) and is_finite(task[0]):
                rows.append(
                    {
                        "method": method,
                        "severity": sev,
                        "psnr_y": psnr[0],
                        "psnr_y_std": psnr[1],
                        metric: task[0],
                        f"{metric}_std": task[1],
                    }
                )
    return pd.DataFrame(rows, columns=["method", "severity", "psnr_y", "psnr_y_std", metric, f"{metric}_std"])


def correlation(x: np.ndarray, y: np.ndarray) -> Correlation:
    """Pearson and Spearman (Pearson of average ranks) correlation; NaN when either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 3:
        return Correlation(float("nan"), float("nan"), n)

    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        if np.std(a) == 0 or np.std(b) == 0:
            return float("nan")
        return float(np.corrcoef(a, b)[0, 1])

    ranks = [pd.Series(v).rank().to_numpy() for v in (x, y)]
    return Correlation(pearson(x, y), pearson(*ranks), n)


def psnr_task_correlation(combined: Combined, dataset: str, metric: str | None = None) -> Correlation:
    """Does restoration quality predict task quality? Correlation over every (method, rain severity) of a dataset."""
    metric = metric or primary_metric(combined.datasets[dataset])
    points = psnr_task_points(combined, dataset, metric)
    return correlation(points["psnr_y"].to_numpy(), points[metric].to_numpy())
