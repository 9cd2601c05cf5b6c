"""``derainbench models``: the registered derainers and their parameter counts (default configs)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models", help="list the registered derainers and their parameter counts",
        description="Print every registered derainer (usable as `derainbench derain --model NAME`) with the "
                    "parameter count of its default configuration, one per line: NAME  COUNT.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print ``name  parameters`` per registered derainer; a model that fails to build is reported, exit 1."""
    from derain.registry import build_model, list_models

    names = list_models()
    width = max(map(len, names), default=0)
    status = 0
    for name in names:
        try:
            count = sum(p.numel() for p in build_model(name).parameters())
        except Exception as exc:  # one broken model must not hide the others
            print(f"{name:<{width}}  error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{name:<{width}}  {count:>11,}")
    return status
