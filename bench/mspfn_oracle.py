"""MSPFN against the authors' own TF graph: max abs difference of our converted model from the oracle's output.

For both oracle variants (``m17n1-u2``: the released graph, ``train-u2``: the training graph) and both ConvLSTM
paths (fast, literal), on the [-1, 1] scale of the official graph:

- ``core BGR``: the [-1, 1] core fed the authors' BGR input (``io.npz`` ``input_bgr``), weights kept in BGR;
- ``API RGB``: ``input.png`` as RGB in [0, 1] through the public forward, weights converted to RGB.

``--before`` also runs the pre-0.2.0 coarse-fusion wiring (the fused input added back instead of the scale's own
shallow feature) with the same weights, to show what the fix changed. Needs ``../shared/data/mspfn_tf_oracle``.

    python bench/mspfn_oracle.py [--before] [--oracle ../shared/data/mspfn_tf_oracle]
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from derain.convert import convert_mspfn
from derain.imageio import read_tensor
from derain.models import mspfn

DEFAULT_ORACLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mspfn_tf_oracle"


@contextmanager
def old_wiring():
    """The pre-0.2.0 coarse fusion: ``fused + branch(fused)`` instead of ``shallow + branch(fused)``."""
    original = mspfn.CoarseFusion.forward
    mspfn.CoarseFusion.forward = lambda self, fused, shallow: fused + self.expand(self.lstm(self.reduce(fused)))
    try:
        yield
    finally:
        mspfn.CoarseFusion.forward = original


def max_diffs(folder: Path) -> dict[tuple[str, str], float]:
    """``{(path, fast|literal): max abs difference}`` for one oracle variant."""
    with np.load(folder / "io.npz") as io:
        ref = torch.from_numpy(io["output"]).permute(0, 3, 1, 2)
        x_bgr = torch.from_numpy(io["input_bgr"]).permute(0, 3, 1, 2)
    bgr, rgb = convert_mspfn(folder / "model.ckpt", rgb=False).model, convert_mspfn(folder / "model.ckpt").model
    image = read_tensor(folder / "input.png")[None]
    out = {}
    for fast in (True, False):
        bgr.fast = rgb.fast = fast
        kind = "fast" if fast else "literal"
        with torch.no_grad():
            out[("core BGR", kind)] = (bgr.forward_signed(x_bgr) - ref).abs().max().item()
            out[("API RGB", kind)] = ((rgb(image) * 2 - 1).flip(1) - ref).abs().max().item()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--oracle", type=Path, default=DEFAULT_ORACLE)
    ap.add_argument("--before", action="store_true", help="also run the pre-0.2.0 coarse-fusion wiring")
    args = ap.parse_args()
    print("max abs difference from the official graph's output, [-1, 1] scale")
    print(f"{'variant':<10} {'path':<9} {'ConvLSTM':<8} {'0.2.0':>9}" + (f" {'before':>9}" if args.before else ""))
    for variant in ("m17n1-u2", "train-u2"):
        after = max_diffs(args.oracle / variant)
        before = None
        if args.before:
            with old_wiring():
                before = max_diffs(args.oracle / variant)
        for key, value in after.items():
            extra = f" {before[key]:9.4f}" if before else ""
            print(f"{variant:<10} {key[0]:<9} {key[1]:<8} {value:9.2e}{extra}")


if __name__ == "__main__":
    main()
