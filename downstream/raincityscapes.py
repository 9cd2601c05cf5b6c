"""RainCityscapes as a rain source of a Cityscapes dataset (``rainy: [{name, path, raincityscapes: {...}}]`` in bench).

Files (``leftImg8bit_trainval_rain.zip``), 36 rainy renderings of each clean frame, pixel-aligned with it::

    leftImg8bit_rain/{split}/{city}/{stem}_leftImg8bit_rain_alpha_{a}_beta_{b}_dropsize_{d}_pattern_{k}.png

(also the authors' list form without ``_leftImg8bit``: ``{stem}_rain_alpha_...``). The 36 are 3 (alpha, beta,
dropsize) settings × 12 streak patterns — (0.01, 0.005, 0.01), (0.02, 0.01, 0.005), (0.03, 0.015, 0.002),
patterns 1..12, as the published loaders enumerate them (no RainCityscapes files were available here).

How the many-to-one set becomes rows (decision): **one rain source per (alpha, beta, dropsize) group**, so a table
has one row per rain setting, as papers report it. Within a group, ``pattern: K`` scores pattern K on every frame;
the default ``pattern: spread`` gives each frame one of the group's patterns, chosen by a hash of its path, so the
patterns are spread evenly over the frames: the score averages over patterns in expectation at the cost of one
image per frame (scoring all 12 on every frame would cost 12× the derainer and task-model time on the 500 val
frames). The set of patterns must be the same for every frame of the group (else an error names the frame).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from derain.imageio import is_image_file, walk_files
from downstream.datasets import DatasetError

NAME = re.compile(r"^(?P<stem>.+?)(?:_leftImg8bit)?_rain_alpha_(?P<a>[0-9.]+)_beta_(?P<b>[0-9.]+)"
                  r"_dropsize_(?P<d>[0-9.]+)_pattern_(?P<k>[0-9]+)$")
KEYS = ("alpha", "beta", "dropsize")


def parse_name(path: str | Path) -> tuple[str, tuple[float, float, float], int] | None:
    """``(frame stem, (alpha, beta, dropsize), pattern)`` of a RainCityscapes file name, None for other names."""
    m = NAME.match(Path(path).stem)
    if not m:
        return None
    return m["stem"], (float(m["a"]), float(m["b"]), float(m["d"])), int(m["k"])


def check_select(select: Any, source: str) -> tuple[tuple[float, float, float], int | None]:
    """``{alpha, beta, dropsize, pattern: K | "spread"}`` → ``((alpha, beta, dropsize), K or None for spread)``."""
    if not isinstance(select, Mapping) or any(k not in select for k in KEYS):
        raise ValueError(f"rain source {source!r}: raincityscapes must give alpha, beta and dropsize (and optionally "
                         f"pattern: K or spread), got {select!r}")
    unknown = sorted(set(select) - {*KEYS, "pattern"})
    if unknown:
        raise ValueError(f"rain source {source!r}: unknown raincityscapes keys {unknown}")
    pattern = select.get("pattern", "spread")
    if pattern != "spread" and (isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1):
        raise ValueError(f"rain source {source!r}: pattern must be a pattern number >= 1 or 'spread', got {pattern!r}")
    group = []
    for key in KEYS:
        value = select[key]
        try:
            group.append(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"rain source {source!r}: raincityscapes.{key} must be a number, got {value!r}") from None
    return (group[0], group[1], group[2]), None if pattern == "spread" else int(pattern)


def _frame_key(rel: str) -> str:
    """``{city}/{stem}`` of a labelled image's relative path (``_leftImg8bit`` and the extension dropped)."""
    rel = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    return rel[: -len("_leftImg8bit")] if rel.endswith("_leftImg8bit") else rel


def spread_pattern(frame: str, patterns: list[int]) -> int:
    """The pattern a frame gets under ``pattern: spread``: a stable hash of its ``{city}/{stem}``."""
    return sorted(patterns)[int(hashlib.sha256(frame.encode()).hexdigest(), 16) % len(patterns)]


def _setting(group: tuple[float, float, float]) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in zip(KEYS, group, strict=True))


def match_raincityscapes(name: str, root: Path, select: Any, dataset: Any, n: int) -> list[Path]:
    """The rainy file of each of the first ``n`` labelled images of ``dataset`` (paths relative to its
    ``images_dir``, as ``{city}/{stem}_leftImg8bit.png``) from the RainCityscapes folder ``root`` (the split folder
    ``leftImg8bit_rain/{split}``) for the group and pattern ``select`` (see :func:`check_select`). Frames without a
    file are listed in one DatasetError (with the settings the folder holds, or a hint when ``root`` is the folder
    above the split's); two files of one frame, setting and pattern (both name forms, or ``0.01`` and ``0.010``)
    are refused naming both."""
    group, pattern = check_select(select, name)
    if not root.is_dir():
        raise FileNotFoundError(f"rain source {name!r}: folder not found: {root}")
    what = f"rain source {name!r} ({root})"
    files: dict[str, dict[int, Path]] = {}
    settings: set[tuple[float, float, float]] = set()
    for f in walk_files(root):
        parsed = parse_name(f) if is_image_file(f) else None
        if parsed:
            settings.add(parsed[1])
        if parsed and parsed[1] == group:
            frame = (f.parent.relative_to(root) / parsed[0]).as_posix()
            known = files.setdefault(frame, {})
            if parsed[2] in known:
                raise DatasetError(f"{what}: frame {frame} has two files of {_setting(group)}, pattern {parsed[2]}: "
                                   f"{known[parsed[2]].name} and {f.name}; keep one")
            known[parsed[2]] = f
    out, missing = [], []
    first: tuple[str, list[int]] | None = None
    for i in range(n):
        frame = _frame_key(Path(dataset.image_path(i)).relative_to(dataset.images_dir).as_posix())
        found = files.get(frame, {})
        if first is None and found:
            first = (frame, sorted(found))
        elif found and first is not None and sorted(found) != first[1]:
            raise DatasetError(f"{what}: frame {frame} has patterns {sorted(found)} of "
                               f"alpha/beta/dropsize {group}, frame {first[0]} has {first[1]}")
        k = pattern if pattern is not None else (spread_pattern(frame, list(found)) if found else None)
        if k in found:
            out.append(found[k])
        else:
            missing.append(frame)
    if missing:
        want = f"pattern {pattern}" if pattern is not None else "any pattern"
        split_folder = root / Path(dataset.images_dir).name
        if not out and split_folder.is_dir():
            hint = f"; point it at the split folder {split_folder} (leftImg8bit_rain/{{split}})"
        elif not files and settings:
            hint = "; settings in it are: " + "; ".join(_setting(g) for g in sorted(settings))
        else:
            hint = ""
        raise DatasetError(f"{what} does not match the labelled images of "
                           f"{dataset.images_dir}: {len(missing)} without a RainCityscapes file of alpha, beta, "
                           f"dropsize {group} and {want}: " + ", ".join(missing[:10])
                           + (" ..." if len(missing) > 10 else "") + hint)
    return out
