"""Atomic writes keep the old file until the new one is complete and leave no temporary; results become JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from derain.fileio import atomic_path, atomic_write_text, to_jsonable


def test_atomic_path_replaces_only_on_success_and_never_leaves_a_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".json" and tmp != target
        tmp.write_text("half a fi")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_to_jsonable_makes_results_plain() -> None:
    value = {"t": (1, 2), "a": np.arange(3), "x": torch.tensor([0.5, 1.5]), "f": np.float32(0.25), "i": np.int64(7),
             "b": np.bool_(True), "nan": float("nan"), 3: "key"}
    out = to_jsonable(value)
    assert out == {"t": [1, 2], "a": [0, 1, 2], "x": [0.5, 1.5], "f": 0.25, "i": 7, "b": True, "nan": None, "3": "key"}
    assert json.loads(json.dumps(out)) == out
    assert not any(isinstance(v, float) and math.isnan(v) for v in out.values())
