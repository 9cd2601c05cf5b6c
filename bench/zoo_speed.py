"""Inference policy of zoo derainers on this machine: CPU time per layout, tiled-vs-whole error, peak memory.

For each architecture (released configuration, seeded random weights: no trained weights are shipped or downloaded),
side by side in one run:

* CPU time of one 480×320 image, NCHW vs channels_last (eager; ``--compile`` adds torch.compile), best of
  ``--repeats``;
* how far tiled output is from whole-image output on real photos (scikit-image's bundled photos, 8-bit levels), at
  the tile size and overlap given;
* with ``--memory``, peak resident memory of whole-image inference at the given megapixels (a fresh process each).

Run with nothing else on the machine:  python bench/zoo_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from derain.inference import derain_tensor
from derain.registry import build_model

ARCHS = ("Restormer", "MPRNet")


def released(arch: str) -> torch.nn.Module:
    """The released configuration (the classes' defaults are Restormer's and MPRNet's deraining models), seeded."""
    torch.manual_seed(0)
    return build_model("zoo", arch=arch).eval()


def best_time(model: torch.nn.Module, x: torch.Tensor, repeats: int, **policy: bool) -> float:
    derain_tensor(model, x, **policy)  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        derain_tensor(model, x, **policy)
        times.append(time.perf_counter() - t0)
    return min(times)


def photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]


def tiled_error(model: torch.nn.Module, tile: int, overlap: int) -> tuple[int, float]:
    """Max 8-bit difference and share of values off by more than one level, over the photos."""
    worst, off, total = 0, 0, 0
    for img in photos():
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        whole = (derain_tensor(model, x, channels_last=False) * 255).round()
        tiled = (derain_tensor(model, x, tile=tile, overlap=overlap, channels_last=False) * 255).round()
        d = (whole - tiled).abs()
        worst = max(worst, int(d.max()))
        off += int((d > 1).sum())
        total += d.numel()
    return worst, off / total


def peak_memory(arch: str, megapixels: float) -> float:
    """Peak RSS (MB) of a fresh process deraining one image of ``megapixels`` (3:2), minus its RSS before."""
    code = f"""
import resource, torch, json
from derain.inference import derain_tensor
from derain.registry import build_model
torch.manual_seed(0)
m = build_model('zoo', arch={arch!r}).eval()
w = int(({megapixels} * 1e6 * 1.5) ** 0.5) // 8 * 8; h = int(w / 1.5) // 8 * 8
x = torch.rand(1, 3, h, w)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
derain_tensor(m, x, channels_last=False)
print(json.dumps([h, w, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    h, w, before, after = json.loads(out.strip().splitlines()[-1])
    return h, w, (after - before) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(ARCHS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, nargs="*", default=[64, 128], help="tile overlaps to measure (none: skip)")
    p.add_argument("--no-time", action="store_true", help="skip the timings")
    p.add_argument("--memory", type=float, nargs="*", default=[], metavar="MP", help="megapixels, e.g. 1 4")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; released configurations, random weights")
    x = torch.rand(1, 3, 320, 480, generator=torch.Generator().manual_seed(0))
    for arch in args.archs:
        model = released(arch)
        params = sum(q.numel() for q in model.parameters())
        if not args.no_time:
            nchw = best_time(model, x, args.repeats, channels_last=False, compile=False)
            nhwc = best_time(model, x, args.repeats, channels_last=True, compile=False)
            model.to(memory_format=torch.contiguous_format)
            line = f"{arch:<10} {params:>11,} params  480x320 CPU: NCHW {nchw * 1000:8.0f} ms  channels_last " \
                   f"{nhwc * 1000:8.0f} ms ({nchw / nhwc:.2f}x)"
            if args.compile:
                comp = best_time(model, x, args.repeats, channels_last=False, compile=True)
                line += f"  compiled NCHW {comp * 1000:8.0f} ms ({nchw / comp:.2f}x)"
            print(line, flush=True)
        for overlap in args.overlap:
            worst, share = tiled_error(model, args.tile, overlap)
            print(f"{arch:<10} tiled {args.tile}/{overlap} vs whole on 4 skimage photos: max {worst} levels, "
                  f"{share * 100:.3f} % of values off by more than one", flush=True)
        for mp in args.memory:
            h, w, mb = peak_memory(arch, mp)
            print(f"{arch:<10} whole-image peak memory at {h}x{w} ({h * w / 1e6:.2f} MP): {mb:,.0f} MB", flush=True)
    print(f"(this process's peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB)")


if __name__ == "__main__":
    main()
