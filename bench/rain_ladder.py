"""Calibration of the rain severity ladder: mean Y-PSNR (MATLAB Y, no crop) of rainy vs clean per level.

Runs every level 1-5 of the current ladder (v2, the calibrated family) and of v1 (derainbench <= 0.2.0), and the
named presets, on the 9 photos scikit-image ships, 3 seeds each, and prints mean, min and max. The README's table
comes from this script:

    python bench/rain_ladder.py
"""

from __future__ import annotations

import numpy as np
import torch

from derain.metrics import psnr
from derain.samples import sample_photos
from derain.synth import LADDER, synthesize

SEEDS = (0, 1, 2)


def level_psnr(level: str, photos: list[np.ndarray]) -> list[float]:
    scores = []
    for i, img in enumerate(photos):
        for seed in SEEDS:
            rainy, _ = synthesize(img, level, seed=1000 * i + seed)
            pair = [torch.from_numpy(np.array(a)).permute(2, 0, 1) for a in (rainy, img)]
            scores.append(float(psnr(*pair)))
    return scores


def main() -> None:
    photos = list(sample_photos().values())
    print(f"Y-PSNR of rainy vs clean, {len(photos)} scikit-image photos x {len(SEEDS)} seeds")
    print("| level | preset | mean | min | max |\n|---|---|---|---|---|")
    names = (*LADDER, "medium", "heavy-haze", *(f"{level}@v1" for level in LADDER), "medium@v1")
    for level in names:
        s = level_psnr(level, photos)
        alias = {"2": "= light = rain100l", "5": "= heavy = rain100h", "2@v1": "= light@v1", "5@v1": "= heavy@v1"}
        print(f"| {level} | {alias.get(level, '')} | {np.mean(s):.2f} | {np.min(s):.2f} | {np.max(s):.2f} |")


if __name__ == "__main__":
    main()
