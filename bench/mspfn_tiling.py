"""Tiled vs untiled MSPFN output: how much tiling changes a derained image, with and without shared statistics.

MSPFN's channel attention pools over the whole input, so a tile sees different statistics than the whole
image. ``derain_tensor(tile=...)`` therefore runs MSPFN inside ``model.tile_context``: the pooled statistics
come from one pass over a downscaled full image. This script prints the max/mean absolute difference (in
1/255 units) and the PSNR between tiled and untiled outputs for both ways, side by side.

    python bench/mspfn_tiling.py --checkpoint runs/train/mspfn-lite-demo/best [--tile 256 --overlap 32]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from skimage.transform import resize

from derain.checkpoint import load_derainer
from derain.inference import derain_tensor
from derain.samples import sample_photos
from derain.synth import synthesize


def test_image(h: int = 500, w: int = 700) -> torch.Tensor:
    """A ``1×3×h×w`` rainy photo (light rain, seed 0) made from a bundled scikit-image photo."""
    photo = resize(sample_photos()["coffee"], (h, w), anti_aliasing=True).astype(np.float32)
    rainy, _ = synthesize(photo, "light", seed=0)
    return torch.from_numpy(rainy).permute(2, 0, 1).unsqueeze(0)


def compare(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (a - b).abs() * 255
    mse = float(((a - b) ** 2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    return f"max {d.max():6.2f}/255  mean {d.mean():6.3f}/255  PSNR {psnr:6.2f} dB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a trained MSPFN checkpoint folder")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, nargs="+", default=[32, 64])
    args = ap.parse_args()
    model = load_derainer(args.checkpoint)
    x = test_image()
    whole = derain_tensor(model, x)
    ctx = model.tile_context
    print(f"{args.checkpoint}: 700x500 image, tile {args.tile}")
    for overlap in args.overlap:
        shared = derain_tensor(model, x, tile=args.tile, overlap=overlap)
        model.tile_context = None  # instance attribute hides the method: plain per-tile pooling
        try:
            local = derain_tensor(model, x, tile=args.tile, overlap=overlap)
        finally:
            del model.tile_context
        assert model.tile_context.__func__ is ctx.__func__
        print(f"overlap {overlap:3d}  per-tile pooling:     {compare(local, whole)}")
        print(f"overlap {overlap:3d}  shared global pooling: {compare(shared, whole)}")


if __name__ == "__main__":
    main()
