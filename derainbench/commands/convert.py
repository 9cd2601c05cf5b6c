"""``derainbench convert``: the MSPFN authors' TensorFlow weights -> one of our checkpoint folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = """\
Convert the official MSPFN weights (TensorFlow 1, github kuijiang94/MSPFN) into an ordinary derainbench
checkpoint folder (model.safetensors + model.json) that derain, score, bench, joint and train
(model.init=DIR) accept like any other. TensorFlow is not needed.

SRC is the checkpoint prefix of the authors' files (e.g. .../epoch44 for epoch44.index +
epoch44.data-00000-of-00001), one of those files, a folder holding them, or a variables.npz (every variable
under its TF name). The variant is read from the variable names: the released model
(TEST_MSPFN_M17N1.py: 17 units, RCABs 1/1/1 -> mspfn-m17n1), the training graph (MSPFN.py, RCABs 1/3/3 ->
mspfn) or TEST_MSPFN.py; any unit count works. Optimizer slots (Adam) and counters are ignored. Weights are
turned from the authors' BGR (cv2) to RGB, so the converted model takes RGB in [0, 1] like every derainer
here; --bgr keeps BGR. Proven against the authors' own graph: see the README, "Use the authors' MSPFN weights".

Examples:
  derainbench convert ~/Downloads/MSPFN/epoch44 --out weights/mspfn-m17n1
  derainbench derain --model weights/mspfn-m17n1 --input Rain100H/rain --output out/
  derainbench score --pred out --gt Rain100H/norain
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="the MSPFN authors' TF checkpoint -> a derainbench checkpoint folder",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="TF checkpoint prefix (or its .index, or its folder) or variables.npz")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="checkpoint folder to write")
    p.add_argument("--bgr", action="store_true",
                   help="keep the authors' BGR channel order (the model then expects BGR input)")
    p.add_argument("--force", action="store_true", help="overwrite a checkpoint already in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from derain.checkpoint import is_checkpoint
    from derain.convert import convert_mspfn, describe, save_converted

    if is_checkpoint(args.out) and not args.force:
        raise FileExistsError(f"{args.out} already holds a checkpoint; pass --force to overwrite it")
    converted = convert_mspfn(args.src, rgb=not args.bgr)
    folder = save_converted(converted, args.out)
    print(describe(converted), file=sys.stderr)
    print(f"wrote {folder} (try: derainbench derain --model {folder} --input RAINY --output OUT)")
    return 0
