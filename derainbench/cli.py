"""``derainbench`` command line: one sub-command per module in ``derainbench/commands``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from derainbench import __version__

# Each module in derainbench/commands exposes ``add_parser(subparsers)``, which registers its sub-command and sets
# ``func``. Only the invoked sub-command's module is imported (the others appear as one-line entries), so
# `derainbench --help` answers without importing torch.
COMMANDS: dict[str, str] = {
    "demo": "the main job, offline: scenes, rain, derainers, detector + segmenter, joint tuning, report",
    "synth": "rain on a folder of clean images (seeded, versioned presets: rain100l, rain100h, ...; JSON sidecars)",
    "train": "train a derainer (MSPFN paper recipe by default) from a YAML config plus key=value overrides",
    "derain": "run a derainer (registered name or checkpoint) over an image or folder, optionally tiled",
    "score": "PSNR/SSIM (MATLAB Y channel and RGB) of predictions against ground truth",
    "realism": "synthetic vs real paired rain, measured with a real-rain derainer (input PSNR, gain, ratio)",
    "models": "list the built-in derainers and the zoo architectures (papers, licences)",
    "convert": "the MSPFN authors' TensorFlow checkpoint -> a checkpoint folder (no TensorFlow needed)",
    "scenes": "generate labelled scenes (boxes and instance polygons: YOLO + COCO JSON; masks), seeded",
    "train-task": "train a task model offline: YOLO detector or instance segmenter, smp segmenter",
    "bench": "score clean / rainy / derained images with a task model (mAP, mask mAP, mIoU, PSNR/SSIM)",
    "joint": "fine-tune a derainer with a task loss (task-driven deraining)",
    "report": "tables (Markdown, HTML, LaTeX, CSV), plots and image grids from one or several bench runs",
}


def description() -> str:
    """The top-level help: what the tool answers, then one line per sub-command."""
    lines = [f"  {name:<10} {summary}" for name, summary in COMMANDS.items()]
    return ("derainbench: does removing rain help detection and segmentation?\n\n"
            "Sub-commands (each has its own --help):\n" + "\n".join(lines) + "\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser. ``command``: import and register only that sub-command fully (the others get a stub
    that lists them); None registers every sub-command fully (imports them all)."""
    parser = argparse.ArgumentParser(
        prog="derainbench", description=description(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"derainbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(f"derainbench.commands.{name.replace('-', '_')}").add_parser(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    os.environ.setdefault("YOLO_OFFLINE", "1")  # = downstream.detection.offline_ultralytics, without importing it
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    # ultralytics unpickles .pt files without restriction (and evals a model .yaml's activation) unless this is set
    # before it is imported; a user's 0 is overridden. Every YOLO checkpoint and model .yaml is also checked by
    # downstream.detection (require_safe_checkpoint, check_model_yaml) before ultralytics sees it.
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command=next((a for a in argv if not a.startswith("-")), ""))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError, OSError, RuntimeError) as exc:
        if os.environ.get("DERAINBENCH_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"derainbench {args.command}: error: {msg}", file=sys.stderr)
        return 1
