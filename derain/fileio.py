"""Small file helpers every package shares: atomic writes (readers never see half a file, a crash or a full disk
leaves no stray temporary), JSON-safe conversion of results, and reading a JSON file with errors that name it."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (same suffix, so writers that infer the format from it work); when
    the block succeeds the temporary replaces ``path`` in one rename. It is removed whatever happens. An ``OSError``
    that names no file or the temporary (``[Errno 28] No space left on device``) is raised again naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    except OSError as exc:  # a full disk, a quota, a read-only folder: name the file, not the temporary (or none)
        if exc.filename not in (None, str(tmp), tmp):
            raise
        if exc.errno is None:
            raise OSError(f"cannot write {path}: {exc}") from exc
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def to_jsonable(obj: Any) -> Any:
    """``obj`` with what ``json.dumps`` refuses made plain: tuples -> lists, tensors and arrays -> lists, numpy
    scalars -> Python numbers, NaN -> None (JSON has no NaN), dict keys -> strings."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a file that is not JSON (bad syntax, not UTF-8, nested too deeply for the parser) is a
    ValueError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply to read: more levels of [ or {{ than Python's "
                         "recursion limit; a damaged or hostile file)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
