"""What bf16 autocast costs in PSNR: derain real rainy pairs in fp32 and under bf16 autocast, score both.

For each model: PSNR-Y/SSIM-Y against the clean targets of the fp32 and the bf16 outputs (8-bit, as
`derainbench derain` writes them, scored as `derainbench score` does), the mean and the largest per-image PSNR
change, and how far the two outputs are apart in 8-bit levels. Runs on CUDA when a GPU is present, else on the CPU
(CPU autocast rounds conv/matmul inputs and weights to bf16 and accumulates in fp32, as CUDA's bf16 convs do; it
says nothing about speed, which this script does not measure).

    python bench/amp_psnr.py --pairs ../shared/data/Rain100L --limit 20 \\
        --model prenet=prenet:../shared/data/weights/PReNet_Rain100L_PReNet6.pth \\
        --model mspfn-lite=derainbench/assets/demo/mspfn-lite
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from derain.checkpoint import load_derainer
from derain.imageio import list_images, read_tensor
from derain.metrics import compute_metrics, quantize
from derain.runtime import resolve_device


def derain(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """``1×3×H×W`` in [0, 1] -> 8-bit-quantized output on the CPU, fp32 or under bf16 autocast."""
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        y = model(x)
    return (quantize(y.float().clamp(0, 1).cpu()) / 255).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=Path, required=True, help="folder with input/ (rainy) and target/ (clean)")
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=MODEL[:WEIGHTS]",
                    help="a registered name (with foreign weights after ':') or a checkpoint folder")
    ap.add_argument("--limit", type=int, help="first N pairs only")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    inputs = list_images(args.pairs / "input")[: args.limit]
    print(f"{len(inputs)} pairs from {args.pairs}, device {device}, {torch.get_num_threads()} threads")
    for spec in args.model:
        label, _, ref = spec.partition("=")
        name, _, weights = ref.partition(":")
        model = load_derainer(name, weights=weights or None).to(device)
        rows = []
        for path in inputs:
            x = read_tensor(path)[None].to(device)
            target = read_tensor(args.pairs / "target" / path.name)[None]
            out = {p: derain(model, x, p == "bf16") for p in ("fp32", "bf16")}
            scores = {p: compute_metrics(y, target) for p, y in out.items()}
            rows.append({"psnr32": float(scores["fp32"]["psnr_y"]), "psnr16": float(scores["bf16"]["psnr_y"]),
                         "ssim32": float(scores["fp32"]["ssim_y"]), "ssim16": float(scores["bf16"]["ssim_y"]),
                         "levels": int(((out["fp32"] - out["bf16"]).abs() * 255).round().max())})
        mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
        deltas = [r["psnr16"] - r["psnr32"] for r in rows]
        print(f"{label}: fp32 {mean['psnr32']:.3f} dB / {mean['ssim32']:.4f}, bf16 {mean['psnr16']:.3f} dB / "
              f"{mean['ssim16']:.4f}; PSNR bf16 - fp32: mean {statistics.fmean(deltas):+.3f} dB, per image "
              f"{min(deltas):+.3f} to {max(deltas):+.3f} dB; outputs differ by up to "
              f"{max(r['levels'] for r in rows)} levels of 255")


if __name__ == "__main__":
    main()
