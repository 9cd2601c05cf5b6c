"""How far tiled derain output is from whole-image output, on real photos, in the 8-bit values a user gets.

For each image: derain it whole and tiled (``--tile``, ``--overlap``), quantize both to 8 bits as `derainbench
derain` writes them, and print the largest difference in 8-bit levels, how many values differ by more than one
level, and the PSNR between the two. This is what backs the tiling sentence of `derainbench derain --help`.

    python bench/tiling_error.py --model derainbench/assets/demo/mspfn-lite \\
        --images ../shared/data/coco8/images/val/*.jpg --size 800x1200 --rain light --tile 512 --overlap 64
    python bench/tiling_error.py --model prenet --weights ../shared/data/weights/PReNet_Rain100L_PReNet6.pth \\
        --images ../shared/data/Rain100L/input/1.png ../shared/data/Rain100L/input/2.png --tile 256
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from skimage.transform import resize

from derain.checkpoint import load_derainer
from derain.imageio import quantize_uint8, read_image
from derain.inference import DEFAULT_STAT_PASSES, derain_tensor
from derain.synth import synthesize


def load(path: str, size: tuple[int, int] | None, rain: str | None, seed: int) -> torch.Tensor:
    """``1×3×H×W`` input: the photo (resized to ``size`` = (H, W) when given), rained with preset ``rain``."""
    img = read_image(path)
    if size is not None:
        img = resize(img, size, anti_aliasing=True).astype(np.float32)
    if rain:
        img, _ = synthesize(img, rain, seed=seed)
    return torch.from_numpy(np.ascontiguousarray(quantize_uint8(img).transpose(2, 0, 1))).float()[None] / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="registered derainer or checkpoint folder")
    ap.add_argument("--weights", help="foreign weights for a registered derainer")
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--size", help="resize every image to HxW first (e.g. 800x1200)")
    ap.add_argument("--rain", help="add this rain preset first (for clean photos)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--stat-passes", type=int, nargs="+", default=[DEFAULT_STAT_PASSES],
                    help="tiled statistics passes (MSPFN) to compare, e.g. 0 1 2")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    model = load_derainer(args.model, args.weights)
    print(f"{args.model}: tile {args.tile}, overlap {args.overlap}, {torch.get_num_threads()} threads")
    worst, over, total = dict.fromkeys(args.stat_passes, 0), dict.fromkeys(args.stat_passes, 0), 0
    for k, path in enumerate(args.images):
        x = load(path, size, args.rain, seed=k)
        whole = quantize_uint8(derain_tensor(model, x)[0].permute(1, 2, 0).numpy()).astype(np.int16)
        total += whole.size
        for passes in args.stat_passes:
            t0 = time.perf_counter()
            tiled = derain_tensor(model, x, tile=args.tile, overlap=args.overlap, stat_passes=passes)
            seconds = time.perf_counter() - t0
            d = np.abs(whole - quantize_uint8(tiled[0].permute(1, 2, 0).numpy()).astype(np.int16))
            mse = float(np.mean(d.astype(np.float64) ** 2))
            psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
            print(f"{path} ({x.shape[-1]}x{x.shape[-2]}), stat_passes {passes}: max {int(d.max())} levels, "
                  f"{int((d > 1).sum())} of {d.size} values differ by > 1 level, {int((d > 0).sum())} by any, "
                  f"PSNR {psnr:.1f} dB, tiled {seconds:.1f} s")
            worst[passes], over[passes] = max(worst[passes], int(d.max())), over[passes] + int((d > 1).sum())
    for passes in args.stat_passes:
        print(f"all, stat_passes {passes}: max {worst[passes]} levels; {over[passes]} of {total} values "
              f"({100 * over[passes] / total:.4f} %) differ by more than 1")


if __name__ == "__main__":
    main()
