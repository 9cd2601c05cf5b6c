"""The layering the product is built on: imports flow one way, ``derain ← downstream ← eval ← reports ←
derainbench``, and no package imports another's private names. Every import statement counts, also the ones inside
functions (lazy imports are still dependencies)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("derain", "downstream", "eval", "reports", "derainbench")  # each may import only those before it


def _imports(path: Path, root: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, imported names)`` of every import in a source file (relative ones resolved)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def violations(root: Path = ROOT) -> list[str]:
    """Every upward import and every private name imported from another package, as ``file:line: what``."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    out = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            for line, module, names in _imports(path, root):
                top = module.split(".")[0]
                where = f"{path.relative_to(root)}:{line}"
                if top in rank and rank[top] > rank[layer]:
                    out.append(f"{where}: {layer} imports {module} (a layer above it)")
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if top in rank and top != layer and private:
                    out.append(f"{where}: private name(s) {', '.join(private)} imported from {module}")
                if top in rank and top != layer and any(part.startswith("_") and not part.startswith("__")
                                                        for part in module.split(".")):
                    out.append(f"{where}: private module {module} imported from another package")
    return out


def test_imports_flow_one_way_and_stay_public() -> None:
    assert violations() == []


def test_the_scan_finds_what_it_forbids(tmp_path: Path) -> None:
    """The checker itself flags an upward import (also a lazy one inside a function) and a cross-package private
    name, and accepts downward and same-package imports."""
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
    (tmp_path / "downstream" / "bad.py").write_text(
        "from derain.train import RunLogger, _private\nimport derain.metrics\n"
        "def f():\n    from eval.bench import run_bench\n    from downstream.tasks import _TASKS\n")
    (tmp_path / "reports" / "ok.py").write_text("from eval.bench import task_metrics\nfrom . import grids\n")
    found = violations(tmp_path)
    assert len(found) == 2, found
    assert "downstream/bad.py:1: private name(s) _private imported from derain.train" in found
    assert "downstream/bad.py:4: downstream imports eval.bench (a layer above it)" in found


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_exists(layer: str) -> None:
    assert (ROOT / layer / "__init__.py").is_file()
