"""Peak memory of tiled inference vs image size: the model's working memory must not grow with the image.

Each size runs in a fresh subprocess (so the peak is its own): a random ``1×3×H×W`` image is derained with
``--tile`` (and, where it fits, whole). Peak resident memory (Linux ``VmHWM``) is reported with the part that
must grow with any method, the image-sized buffers (output and blend-weight sum: 16 bytes per pixel; the input
is allocated before the baseline), subtracted: what remains is the model's working memory, flat if tiling works.

    python bench/tiling_memory.py --model derainbench/assets/demo/mspfn-lite --megapixels 1 4 16 --tile 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, time, torch
from derain.checkpoint import load_derainer
from derain.inference import derain_tensor
model, mp, tile = sys.argv[1], float(sys.argv[2]), sys.argv[3]
tile = None if tile == "none" else int(tile)
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
net = load_derainer(model)
h = int((mp * 1e6 * 2 / 3) ** 0.5) // 8 * 8
w = int(h * 3 / 2) // 8 * 8
x = torch.rand(1, 3, h, w)
derain_tensor(net, torch.rand(1, 3, 64, 64))  # warm-up: one-time allocations
base = hwm()
t = time.perf_counter()
derain_tensor(net, x, tile=tile, channels_last=True)
print(json.dumps({"h": h, "w": w, "base": base, "peak": hwm(), "seconds": time.perf_counter() - t}))
"""


def measure(model: str, megapixels: float, tile: int | None) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(megapixels), str(tile or "none")],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="derainbench/assets/demo/mspfn-lite")
    ap.add_argument("--megapixels", type=float, nargs="+", default=[1, 4, 16])
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--whole-up-to", type=float, default=1, help="also run untiled up to this many megapixels")
    args = ap.parse_args()
    print(f"{args.model}, tile {args.tile}; MB = peak RSS above the loaded model and input; buffers = 16 bytes/pixel")
    print(f"{'image':>12} {'mode':>6} {'peak MB':>8} {'buffers MB':>10} {'working MB':>10} {'seconds':>8}")
    for mp in args.megapixels:
        modes = [args.tile] + ([None] if mp <= args.whole_up_to else [])
        for tile in modes:
            r = measure(args.model, mp, tile)
            extra = r["peak"] - r["base"]
            buffers = 16 * r["h"] * r["w"] / 2**20
            print(f"{r['w']:>5}x{r['h']:<6} {'tiled' if tile else 'whole':>6} {extra:8.0f} {buffers:10.0f} "
                  f"{extra - buffers:10.0f} {r['seconds']:8.1f}")


if __name__ == "__main__":
    main()
