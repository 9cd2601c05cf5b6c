"""Inference: tiled == untiled (to < 1/255), bounded tile memory, smooth blending, files in / files out."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize
from torch import nn

from derain.checkpoint import load_derainer
from derain.imageio import ImageReadError, read_tensor, write_image
from derain.inference import (
    blend_window,
    derain_paths,
    derain_tensor,
    owned_spans,
    resolve_device,
    tile_spans,
    tile_starts,
)
from derain.registry import build_model

TOL = 1 / 255


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A natural 700×500 (W×H) photo: scikit-image's astronaut resized, ``1×3×500×700`` in [0, 1]."""
    img = resize(skdata.astronaut(), (500, 700), anti_aliasing=True)
    return torch.from_numpy(img).permute(2, 0, 1).float().clamp(0, 1)[None].contiguous()


def random_prenet(stages: int = 2, channels: int = 8, seed: int = 0) -> nn.Module:
    """PReNet with seeded N(0, 2/fan_in) conv weights: strong enough that tile edges matter (see overlap 0)."""
    model = build_model("prenet", stages=stages, channels=channels)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(2 / fan_in))
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
    return model.eval()


class Recorder(nn.Module):
    """Wraps a model and records the largest input (by element count) it was called with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.largest: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > math.prod(self.largest or (0,)):
            self.largest = tuple(x.shape)
        return self.model(x)


def test_tiled_matches_untiled_random_prenet(photo: torch.Tensor) -> None:
    """2-stage PReNet: receptive radius 13 × 2 = 26 px. Each interior tile edge discards overlap // 4 pixels
    before its ramp, so overlap = 4 × 26 = 104 makes every blended pixel exact (to float rounding)."""
    model = random_prenet()
    assert model.receptive_radius == 26
    full = derain_tensor(model, photo)
    assert (full - photo).abs().mean() > 0.1  # the random net really changes the image
    tiled = derain_tensor(model, photo, tile=256, overlap=4 * model.receptive_radius, batch_size=3)
    assert (tiled - full).abs().max() <= TOL
    naive = derain_tensor(model, photo, tile=256, overlap=0)  # no context: visible seams
    assert (naive - full).abs().max() > 10 * TOL


@pytest.mark.slow
def test_tiled_matches_untiled_official_prenet(shared_data: Path, photo: torch.Tensor) -> None:
    """6 stages: theoretical receptive radius 78 px, but the trained net's response to a tile edge falls
    below 0.01/255 within ~32 px, so overlap 64 (mid-ramp pixels 32 px from both edges) suffices.
    Measured max |tiled - untiled|: 0.05/255 at tile 384 (0.34/255 at tile 256; overlap 32 gives 0.5-2.7/255)."""
    model = load_derainer("prenet", weights=shared_data / "weights" / "PReNet_Rain100L_PReNet6.pth")
    full = derain_tensor(model, photo, channels_last=True)
    tiled = derain_tensor(model, photo, tile=384, overlap=64, channels_last=True)
    assert (tiled - full).abs().max() <= TOL


def test_model_only_sees_tiles(photo: torch.Tensor) -> None:
    """Memory on the model's device is set by the tile, not the image: the same largest input for 2× the size."""
    model = Recorder(build_model("prenet", stages=1, channels=4).eval())
    big = torch.nn.functional.interpolate(photo, scale_factor=2, mode="bilinear").clamp(0, 1)
    seen = []
    for img in (photo, big):
        model.largest = ()
        out = derain_tensor(model, img, tile=256, overlap=32, batch_size=2)
        assert out.shape == img.shape
        seen.append(model.largest)
    assert seen[0] == seen[1] == (2, 3, 256, 256)


def test_identity_through_tiles_returns_input() -> None:
    """Blend weights normalise to 1 everywhere, also with odd sizes and a shifted last tile."""
    identity = build_model("identity")
    for h, w in ((300, 517), (257, 256), (100, 700), (40, 30)):
        x = torch.rand(2, 3, h, w)
        out = derain_tensor(identity, x, tile=128, overlap=40, batch_size=3)
        torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_blend_window_is_smooth() -> None:
    overlap, margin, ramp = 64, 16, 32
    w = blend_window(256, overlap, True, True)
    assert (w[:margin] == 0).all() and (w[-margin:] == 0).all()
    assert (w[margin + ramp : -margin - ramp] == 1).all()
    rise = w[margin : margin + ramp]
    assert (rise.diff() > 0).all() and 0 < rise[0] < 0.01 and 0.99 < rise[-1] < 1
    assert w.diff().abs().max() <= math.pi / (2 * ramp) + 1e-9  # a ramp, not a jump (flat average: 0.5)
    # two neighbours sharing exactly `overlap` pixels: mirrored ramps sum to one
    left, right = w[-overlap:], w[:overlap]
    torch.testing.assert_close(left + right, torch.ones(overlap, dtype=torch.float64))
    assert (blend_window(256, overlap, False, False) == 1).all()  # image borders: no ramp


def test_tile_starts_cover_the_image() -> None:
    assert tile_starts(700, 256, 32) == [0, 224, 444]
    assert tile_starts(700, 256, 32, align=8) == [0, 224, 440]
    assert tile_starts(256, 256, 32) == [0]
    with pytest.raises(ValueError, match="overlap"):
        derain_tensor(build_model("identity"), torch.rand(1, 3, 300, 300), tile=64, overlap=64)


def test_derain_tensor_checks_shape_and_device() -> None:
    with pytest.raises(ValueError, match="B×3×H×W"):
        derain_tensor(build_model("identity"), torch.rand(3, 8, 8))
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    out = derain_tensor(random_prenet(), torch.rand(1, 3, 20, 24), amp=True, channels_last=True)
    assert out.shape == (1, 3, 20, 24) and out.dtype == torch.float32


def _write_inputs(folder: Path) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    imgs = [rng.random((20, 30, 3)), rng.random((20, 30, 3)), rng.random((17, 9, 3))]
    names = ["a.png", "b.jpg", "c.png"]
    for name, img in zip(names, imgs, strict=True):
        write_image(folder / name, img)
    return [read_tensor(folder / n) for n in names]


def test_derain_paths_folder(tmp_path: Path) -> None:
    src, dst = tmp_path / "in", tmp_path / "out"
    inputs = _write_inputs(src)
    model = Recorder(build_model("identity"))
    written = derain_paths(model, src, dst, batch_size=2, device="cpu", progress=False)
    assert [p.name for p in written] == ["a.png", "b.png", "c.png"]
    assert model.largest == (2, 3, 20, 30)  # the two 30×20 images went through together
    for img, path in zip(inputs, written, strict=True):
        torch.testing.assert_close(read_tensor(path), img, rtol=0, atol=0)


def test_derain_paths_single_file_and_tiles(tmp_path: Path) -> None:
    _write_inputs(tmp_path / "in")
    written = derain_paths(
        random_prenet(), tmp_path / "in" / "b.jpg", tmp_path / "out", tile=16, overlap=8, progress=False
    )
    assert written == [tmp_path / "out" / "b.png"] and written[0].is_file()


def test_derain_paths_refuses_input_folder_and_names_bad_file(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _write_inputs(src)
    identity = build_model("identity")
    with pytest.raises(ValueError, match="input folder"):
        derain_paths(identity, src, src, progress=False)
    (src / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        derain_paths(identity, src, tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="missing"):
        derain_paths(identity, tmp_path / "missing", tmp_path / "out", progress=False)


def _random_mspfn_lite() -> nn.Module:
    """A seeded 2-unit mspfn-lite whose PReLU slopes are non-trivial (they start at 0, a plain ReLU)."""
    torch.manual_seed(0)
    model = build_model("mspfn-lite", units=2).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight" in name and p.ndim == 1:
                p.uniform_(0.0, 0.3)
    return model


def _mspfn_tiled_errors(overlap: int) -> tuple[float, float]:
    """Max |tiled − untiled| for a small random MSPFN with shared global pooling and with per-tile pooling."""
    model = _random_mspfn_lite()
    x = torch.rand(1, 3, 150, 200) * 0.2
    x[..., :, 100:] += 0.7  # tiles on the right see very different statistics than the whole image
    whole = derain_tensor(model, x)
    shared = derain_tensor(model, x, tile=96, overlap=overlap)
    model.tile_context = None  # hide the method: every tile pools over itself
    local = derain_tensor(model, x, tile=96, overlap=overlap)
    del model.tile_context
    return float((shared - whole).abs().max()), float((local - whole).abs().max())


def test_mspfn_tiling_is_aligned_and_shares_global_statistics() -> None:
    assert all(s % 8 == 0 for s in tile_starts(150, 96, 32, align=8))
    shared, local = _mspfn_tiled_errors(overlap=64)  # measured: 0.02/255 shared vs 0.15/255 per tile
    assert shared < 0.5 * local, (shared, local)
    assert shared < 1 / 255


@pytest.mark.parametrize(("size", "tile", "overlap"), [(150, 96, 32), (230, 64, 48), (500, 512, 64), (1201, 512, 128),
                                                      (97, 40, 8), (333, 100, 0)])
def test_owned_spans_partition_the_padded_image(size: int, tile: int, overlap: int) -> None:
    """Each tile owns an aligned part of itself; the parts tile [0, size rounded up to 8) without gaps or overlaps."""
    spans = tile_spans(size, tile, overlap, align=8)
    owned = owned_spans(spans, size, align=8)
    cuts = [(s0 + a, s0 + b) for (s0, _), (a, b) in zip(spans, owned, strict=True)]
    assert cuts[0][0] == 0 and cuts[-1][1] == -(-size // 8) * 8
    assert all(prev[1] == nxt[0] for prev, nxt in zip(cuts, cuts[1:], strict=False))
    for (s0, e0), (a, b) in zip(spans, owned, strict=True):
        assert 0 <= a <= b <= -(-(e0 - s0) // 8) * 8 and a % 8 == 0 and b % 8 == 0  # inside the padded tile


def _coarse_first_pass(model: nn.Module, max_side: int) -> None:
    """Make the model's first tiling pass take statistics from a copy downscaled to ``max_side`` (default 512)."""
    import functools

    model.tile_context = functools.partial(type(model).tile_context, model, max_side=max_side)


def test_mspfn_statistics_pass_gathers_whole_image_statistics() -> None:
    """Tiled MSPFN whose first-pass statistics are poor (a 24 px copy of the image) comes back, after one tiled
    statistics pass, to where exact whole-image statistics put it; without the pass it stays further off."""
    model = _random_mspfn_lite()
    x = torch.rand(1, 3, 120, 232, generator=torch.Generator().manual_seed(2)) * 0.2
    x[..., :, 100:] += 0.7
    whole = derain_tensor(model, x)
    errors = {}
    for max_side, passes in ((24, 0), (24, 1), (24, 2), (10_000, 0)):
        _coarse_first_pass(model, max_side)
        errors[max_side, passes] = float((derain_tensor(model, x, tile=96, overlap=64, stat_passes=passes) - whole)
                                         .abs().max())
    del model.tile_context
    exact = errors[10_000, 0]
    assert errors[24, 0] > 3 * exact, errors  # the coarse copy's statistics are what is wrong
    assert errors[24, 1] < 1.5 * exact and errors[24, 2] < 1.5 * exact, errors


def test_statistics_pass_rejects_a_partial_cover() -> None:
    from derain.models.mspfn import RCAB

    model = build_model("mspfn-lite", units=1).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode(), model.tile_context(x), pytest.raises(RuntimeError, match="partition"):
        with model.collect_tile_statistics(64, 64) as stats:
            stats.cores = [(0, 32, 0, 64)]  # only the top half
            model(x)
    assert all(m.collector is None for m in model.modules() if isinstance(m, RCAB))
    with pytest.raises(RuntimeError, match="inside"), model.collect_tile_statistics(64, 64):
        pass
