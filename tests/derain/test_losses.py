"""Losses: values on hand-computed cases and the Laplacian kernel."""

from __future__ import annotations

import math

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
