"""Small pieces shared by the architectures: size padding so every model accepts any H×W."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad ``B×C×H×W`` on the bottom/right to multiples of ``multiple``; returns (padded, (H, W)).

    Falls back to replicate padding where the image is too small for reflection.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop ``B×C×H'×W'`` back to the top-left ``size`` (H, W)."""
    return x[..., : size[0], : size[1]]
