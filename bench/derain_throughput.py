"""`derainbench derain` throughput: the streamed CLI path with its default policy vs the sequential loop.

A folder of small rainy images (default 200 of 96×128 px: crops of the bundled photos with light rain, seeded)
is derained twice per repeat, alternating, in one process:

- sequential: for each file read -> derain (NCHW, one image per call, the CLI's default before the inference
  policy) -> write, one after the other;
- streamed: ``derain_paths`` as the CLI calls it now: a reader and a writer thread overlap decoding and encoding
  with the model, which runs with ``inference_policy`` (channels_last on CPU).

    python bench/derain_throughput.py --model derainbench/assets/demo/mspfn-lite [--n 200] [--repeats 2]

Prints images/s of both, the ratio, and the largest difference between the two routes' PNGs (8-bit levels).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from derain.checkpoint import load_derainer
from derain.imageio import list_images, read_image, read_tensor, write_image
from derain.inference import derain_paths, derain_tensor
from derain.runtime import inference_policy
from derain.samples import sample_photos
from derain.synth import synthesize


def make_folder(folder: Path, n: int, h: int, w: int) -> None:
    """``n`` rainy crops of the bundled photos (light rain, seeded), as PNGs."""
    photos = list(sample_photos().values())
    rng = np.random.default_rng(0)
    for k in range(n):
        photo = photos[k % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
        rainy, _ = synthesize(photo[y : y + h, x : x + w], "light", seed=k)
        write_image(folder / f"{k:04d}.png", rainy)


def sequential(model: torch.nn.Module, src: Path, dst: Path) -> None:
    for f in list_images(src):
        write_image(dst / f"{f.stem}.png", derain_tensor(model, read_tensor(f)[None], channels_last=False)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="derainbench/assets/demo/mspfn-lite", help="derainer name or checkpoint")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", default="96x128", help="HxW of the crops")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    model = load_derainer(args.model)
    policy = inference_policy(torch.device("cpu"))
    print(f"{args.model}: {args.n} images of {w}x{h}, {torch.get_num_threads()} threads, policy {policy}, "
          f"best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "rainy"
        make_folder(src, args.n, h, w)
        best = {"sequential": float("inf"), "streamed": float("inf")}
        for _ in range(args.repeats):
            for route in best:
                dst = Path(tmp) / route
                model.to(memory_format=torch.contiguous_format)  # each route sets the layout it uses
                t = time.perf_counter()
                if route == "sequential":
                    sequential(model, src, dst)
                else:
                    derain_paths(model, src, dst, batch_size=policy.batch_size, device="cpu",
                                 channels_last=policy.channels_last, progress=False)
                best[route] = min(best[route], time.perf_counter() - t)
        diff = max(int(np.abs(np.rint(read_image(Path(tmp) / "sequential" / f.name) * 255)
                              - np.rint(read_image(Path(tmp) / "streamed" / f.name) * 255)).max())
                   for f in list_images(src))
    for route, t in best.items():
        print(f"{route:<10}: {t:6.2f} s  {args.n / t:6.1f} img/s")
    print(f"speed-up: {best['sequential'] / best['streamed']:.2f}x; largest output difference: {diff} level(s)")


if __name__ == "__main__":
    main()
