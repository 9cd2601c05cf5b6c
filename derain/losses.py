"""Restoration losses, chosen by name (``LOSSES``, :func:`build_loss`). The MSPFN loss: Charbonnier + 0.05 ×
Charbonnier of the 3×3 Laplacian, on [-1, 1]; PReNet's: negative SSIM.

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


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 2-D Gaussian ``size × size`` (float64; cast to the input's dtype where used)."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


class SSIMLoss(nn.Module):
    """``loss_weight × (1 − SSIM(pred, target))``: PReNet's training loss (the authors minimise −SSIM; the constant
    changes no gradient). SSIM as their SSIM.py: 11×11 Gaussian window (σ 1.5) per RGB channel, zero-padded to the
    input size, C1 = 0.01², C2 = 0.03² (images in [0, 1]), averaged over pixels, channels and the batch."""

    def __init__(self, loss_weight: float = 1.0, window: int = 11, sigma: float = 1.5) -> None:
        super().__init__()
        self.loss_weight, self.window = loss_weight, window
        self.register_buffer("kernel", gaussian_window(window, sigma)[None, None], persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = pred.shape[1]
        k = self.kernel.to(pred.dtype).expand(c, 1, self.window, self.window)

        def blur(x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, k, padding=self.window // 2, groups=c)

        mu_p, mu_t = blur(pred), blur(target)
        var_p = blur(pred * pred) - mu_p**2
        var_t = blur(target * target) - mu_t**2
        cov = blur(pred * target) - mu_p * mu_t
        c1, c2 = 0.01**2, 0.03**2
        ssim = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
        return self.loss_weight * (1 - ssim.mean())


# The training losses by name (TrainConfig.loss.name); each takes the options its __init__ names.
LOSSES: dict[str, type[nn.Module]] = {"mspfn": MSPFNLoss, "charbonnier": CharbonnierLoss, "ssim": SSIMLoss}


def build_loss(name: str, **options: float) -> nn.Module:
    """The loss registered as ``name`` with the ``options`` it takes (others are the caller's defaults for other
    losses and are ignored): ``mspfn`` uses edge_weight and eps, ``charbonnier`` eps, ``ssim`` none."""
    import inspect

    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    cls = LOSSES[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted})
