"""``derainbench models``: the built-in derainers with their parameter counts, and the zoo architectures spandrel can
load in this install, with paper, year and the licence of their original code."""

from __future__ import annotations

import argparse
import sys

HELP = """\
Print every built-in derainer (usable as `derainbench derain --model NAME`) with the parameter count of its default
configuration, one per line: NAME  COUNT. Then the derainer zoo: every architecture spandrel (and, when installed,
spandrel-extra-arches) detects in a weights file as its authors publish it (`derainbench derain --model FILE`), with
its paper, year, the licence of its original code, and whether derainbench checked its output against the authors'
own test code (the others are loaded on spandrel's word). Architectures whose original code is non-commercial are
marked NC and warn when loaded. No weights are shipped or downloaded: the zoo loads files you supply.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the built-in derainers and the zoo architectures (papers, licences)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-zoo", action="store_true", help="only the built-in derainers")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print ``name  parameters`` per built-in derainer, then the zoo; a model that fails to build is reported,
    exit 1."""
    from derain.registry import build_model, list_models

    names = [n for n in list_models() if n != "zoo"]
    width = max(map(len, names), default=0)
    status = 0
    print("built-in derainers (name, parameters at the default configuration):")
    for name in names:
        try:
            count = sum(p.numel() for p in build_model(name).parameters())
        except Exception as exc:  # one broken model must not hide the others
            print(f"{name:<{width}}  error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"  {name:<{width}}  {count:>11,}")
    if not args.no_zoo:
        status = max(status, _print_zoo())
    return status


def _print_zoo() -> int:
    from derain import zoo

    try:
        archs = zoo.zoo_architectures()
    except zoo.ZooError as exc:
        print(f"zoo: unavailable: {exc}", file=sys.stderr)
        return 1
    print(f"\nderainer zoo ({len(archs)} architectures spandrel detects here; `--model FILE` loads any that maps RGB "
          "to RGB at the same size; NC = original code non-commercial):")
    width = max(map(len, archs))
    for arch in archs:
        info = zoo.facts(arch)
        year = f"{info.year}" if info.year else "    "
        nc = "NC" if info.non_commercial else "  "
        checked = "verified against the authors' code" if info.verified else "spandrel's word"
        print(f"  {arch:<{width}}  {year}  {nc}  {info.licence}; {checked}" + (
            f"; {info.paper}" if info.paper != arch else ""))
    if not zoo.extra_installed():
        print(f"\n{zoo.EXTRA_PACKAGE} is not installed: Restormer, MPRNet, MIRNet-v2 and others need it "
              f"({zoo.EXTRA_HINT})")
    return 0
