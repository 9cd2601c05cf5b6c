"""The ``identity`` derainer: returns the rainy input unchanged (the "no deraining" baseline)."""

from __future__ import annotations

import torch
from torch import nn

from derain.registry import register_model


@register_model("identity")
class Identity(nn.Module):
    """``B×3×H×W`` float in [0, 1] -> the same tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
