"""Restoration losses. The MSPFN loss: Charbonnier + 0.05 × Charbonnier of the 3×3 Laplacian, on [-1, 1].

Every loss takes ``loss_weight`` (BasicSR convention) and maps ``pred, target`` (``B×3×H×W``) to a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Mean of ``sqrt((pred − target)² + eps²)``: a smooth L1 that is robust to outliers."""
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """Per-channel 3×3 Laplacian (8 in the centre, −1 around), zero padding: ``B×C×H×W -> B×C×H×W``."""
    c = x.shape[1]
    k = -torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 8.0
    return F.conv2d(x, k.expand(c, 1, 3, 3), padding=1, groups=c)


class CharbonnierLoss(nn.Module):
    """``loss_weight × charbonnier(pred, target, eps)``."""

    def __init__(self, loss_weight: float = 1.0, eps: float = 1e-3) -> None:
        super().__init__()
        self.loss_weight, self.eps = loss_weight, eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_weight * charbonnier(pred, target, self.eps)


class MSPFNLoss(nn.Module):
    """The MSPFN training loss on images given in [0, 1] (rescaled to [-1, 1] as the official code trains).

    ``loss = loss_weight × (charbonnier(p, t) + edge_weight × charbonnier(lap(p), lap(t)))``.
    """

    def __init__(self, loss_weight: float = 1.0, edge_weight: float = 0.05, eps: float = 1e-3) -> None:
        super().__init__()
        self.loss_weight, self.edge_weight, self.eps = loss_weight, edge_weight, eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, t = pred * 2 - 1, target * 2 - 1
        loss = charbonnier(p, t, self.eps)
        if self.edge_weight:
            loss = loss + self.edge_weight * charbonnier(laplacian(p), laplacian(t), self.eps)
        return self.loss_weight * loss
