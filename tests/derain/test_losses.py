"""Losses: values on hand-computed cases and the Laplacian kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from derain.losses import CharbonnierLoss, MSPFNLoss, charbonnier, laplacian


def test_charbonnier_hand_values() -> None:
    a = torch.zeros(1, 1, 2, 2)
    b = torch.tensor([[[[0.0, 3.0], [4.0, 0.0]]]])
    expected = (2 * 1e-3 + math.sqrt(9 + 1e-6) + math.sqrt(16 + 1e-6)) / 4
    assert math.isclose(charbonnier(a, b).item(), expected, rel_tol=1e-6)
    assert math.isclose(CharbonnierLoss(loss_weight=2.0)(a, b).item(), 2 * expected, rel_tol=1e-6)


def test_laplacian_of_constant_is_zero_inside_and_of_impulse_is_the_kernel() -> None:
    const = torch.full((1, 3, 5, 5), 0.7)
    assert torch.allclose(laplacian(const)[..., 1:-1, 1:-1], torch.zeros(1, 3, 3, 3), atol=1e-6)
    imp = torch.zeros(1, 1, 5, 5)
    imp[0, 0, 2, 2] = 1.0
    out = laplacian(imp)[0, 0, 1:4, 1:4]
    assert torch.equal(out, torch.tensor([[-1.0, -1, -1], [-1, 8, -1], [-1, -1, -1]]))


def test_mspfn_loss_combines_both_terms_on_signed_images() -> None:
    torch.manual_seed(0)
    p, t = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    ps, ts = p * 2 - 1, t * 2 - 1
    expected = charbonnier(ps, ts) + 0.05 * charbonnier(laplacian(ps), laplacian(ts))
    torch.testing.assert_close(MSPFNLoss()(p, t), expected)
    assert MSPFNLoss()(t, t).item() < 1.1e-3  # only the eps floor remains


def _ssim_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM written independently with scipy: per channel, Gaussian weights correlated with zero ('constant')
    borders, the standard formula with C1 = 0.01², C2 = 0.03²; mean over pixels and channels."""
    from scipy import ndimage

    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    maps = []
    for c in range(a.shape[0]):
        f = lambda z: ndimage.correlate(z, w, mode="constant", cval=0.0)  # noqa: E731
        ma, mb = f(a[c]), f(b[c])
        va, vb, cov = f(a[c] ** 2) - ma**2, f(b[c] ** 2) - mb**2, f(a[c] * b[c]) - ma * mb
        maps.append(((2 * ma * mb + 1e-4) * (2 * cov + 9e-4)) / ((ma**2 + mb**2 + 1e-4) * (va + vb + 9e-4)))
    return float(np.mean(maps))


def test_ssim_loss_is_one_minus_prenets_ssim() -> None:
    """PReNet's loss (the authors minimise -SSIM of SSIM.py): checked against an independent scipy computation."""
    from derain.losses import SSIMLoss

    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 37, 45, generator=g, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn(1, 3, 37, 45, generator=g, dtype=torch.float64)).clamp(0, 1)
    loss = SSIMLoss()(pred, target)
    assert float(loss) == pytest.approx(1 - _ssim_scipy(pred[0].numpy(), target[0].numpy()), abs=1e-9)
    assert float(SSIMLoss()(target, target)) == pytest.approx(0.0, abs=1e-12)
    pred32 = pred.float().requires_grad_()
    SSIMLoss()(pred32, target.float()).backward()
    assert torch.isfinite(pred32.grad).all() and pred32.grad.abs().sum() > 0


def test_losses_by_name() -> None:
    from derain.losses import LOSSES, SSIMLoss, build_loss

    assert set(LOSSES) == {"mspfn", "charbonnier", "ssim"}
    mspfn = build_loss("mspfn", edge_weight=0.1, eps=1e-2)
    assert isinstance(mspfn, MSPFNLoss) and mspfn.edge_weight == 0.1 and mspfn.eps == 1e-2
    assert isinstance(build_loss("ssim", edge_weight=0.05, eps=1e-3), SSIMLoss)  # options it does not take
    assert build_loss("charbonnier", eps=0.5).eps == 0.5
    with pytest.raises(ValueError, match="unknown loss 'l3'.*mspfn"):
        build_loss("l3")
