"""MSPFN: Multi-Scale Progressive Fusion Network (Jiang et al., CVPR 2020), following the official TF code.

Reads top-down: building blocks, the zero-state ConvLSTM (fast and literal paths), coarse fusion,
fine fusion units, the network, then the registered configs (``mspfn``, ``mspfn-m17n1``, ``mspfn-lite``).
Facts and parameter counts: ../shared/DESIGN.md §2. Stride-2 convs and transposed convs reproduce
TensorFlow's SAME alignment so that official weights could be ported one-to-one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from derain.models.common import crop_to, pad_to_multiple
from derain.registry import register_model


def prelu(channels: int) -> nn.PReLU:
    """Per-channel PReLU initialised to 0 (the official code's choice: starts as a ReLU)."""
    return nn.PReLU(channels, init=0.0)


class ConvDown(nn.Conv2d):
    """3×3 stride-2 conv with TF SAME padding (0 before, 1 after): ``B×C×H×W -> B×C'×H/2×W/2``."""

    def __init__(self, cin: int, cout: int, bias: bool = False) -> None:
        super().__init__(cin, cout, 3, stride=2, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))


class ConvUp(nn.ConvTranspose2d):
    """3×3 stride-2 transposed conv as TF's SAME conv2d_transpose: pad 0, crop to ``2H×2W``."""

    def __init__(self, cin: int, cout: int, bias: bool = False) -> None:
        super().__init__(cin, cout, 3, stride=2, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h, w = x.shape[-2:]
        return super().forward(x)[..., : 2 * h, : 2 * w]


class ConvAct(nn.Sequential):
    """Bias-free conv (``same`` 3×3, stride-2 ``down`` or transposed ``up``) followed by PReLU."""

    def __init__(self, cin: int, cout: int, kind: str = "same") -> None:
        if kind == "same":
            conv: nn.Module = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        elif kind == "down":
            conv = ConvDown(cin, cout)
        elif kind == "up":
            conv = ConvUp(cin, cout)
        else:
            raise ValueError(f"unknown conv kind {kind!r}")
        super().__init__(conv, prelu(cout))


class TileStatistics:
    """Sums of each RCAB's features over the part of the image each tile owns, during one tiled pass.

    The owned parts (``cores``, one per tile of the current model call, ``(y0, y1, x0, x1)`` in the tile's padded
    input pixels, multiples of 8) partition the whole padded image, so after the pass every block's sum divided by
    its feature-map area is its global average pool over the whole image, up to how far tile features near an
    owned part's edge differ from whole-image features. See :meth:`MSPFN.collect_tile_statistics`.
    """

    def __init__(self, height: int, width: int, multiple: int) -> None:
        self.padded = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
        self.cores: list[tuple[int, int, int, int]] = []
        self.input_height = 0  # the current call's padded tile height (set by MSPFN.forward)
        self.sums: dict[RCAB, tuple[torch.Tensor, int, int]] = {}  # block -> (channel sums, pixels, scale)

    def add(self, block: RCAB, f: torch.Tensor) -> None:
        """Add ``f`` (``B×C×h×w``: the block's features of the B tiles of this call) over each tile's owned part."""
        if len(self.cores) != f.shape[0]:
            raise RuntimeError(f"{len(self.cores)} owned regions set for a batch of {f.shape[0]} tiles")
        scale = self.input_height // f.shape[-2]
        total, pixels, _ = self.sums.get(block, (f.new_zeros(f.shape[1], dtype=torch.float64), 0, scale))
        for b, (y0, y1, x0, x1) in enumerate(self.cores):
            part = f[b, :, y0 // scale : y1 // scale, x0 // scale : x1 // scale]
            total = total + part.sum(dim=(-2, -1), dtype=torch.float64)
            pixels += part.shape[-2] * part.shape[-1]
        self.sums[block] = (total, pixels, scale)

    def means(self) -> dict[RCAB, torch.Tensor]:
        """Each block's pooled features ``1×C×1×1``; checks the owned parts covered its whole feature map once."""
        out = {}
        for block, (total, pixels, scale) in self.sums.items():
            area = (self.padded[0] // scale) * (self.padded[1] // scale)
            if pixels != area:
                raise RuntimeError(f"tile statistics covered {pixels} of {area} feature pixels: the owned regions do "
                                   "not partition the image")
            out[block] = (total / area).float().view(1, -1, 1, 1)
        return out


class RCAB(nn.Module):
    """Residual channel-attention block: ``x + f(x) * sigmoid(MLP(GAP(f(x))))``; convs with bias.

    The global average pool makes the output depend on the whole input, which tiling would change. For tiled
    inference, :meth:`MSPFN.tile_context` records each block's pooled statistics from a downscaled view of the
    full image (``mode = "record"``) and then makes every tile use them (``mode = "replay"``);
    :meth:`MSPFN.collect_tile_statistics` refines them from the tiles themselves (``collector``).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.mode: str | None = None
        self.pooled: torch.Tensor | None = None
        self.collector: TileStatistics | None = None
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), prelu(channels),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        hidden = channels // reduction
        self.attention = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), prelu(hidden), nn.Conv2d(hidden, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        if self.mode == "replay" and self.pooled is not None:
            pooled = self.pooled.to(f.dtype)
        else:
            pooled = F.adaptive_avg_pool2d(f, 1)
            if self.mode == "record":
                self.pooled = pooled.detach()
        if self.collector is not None:
            self.collector.add(self, f)
        return x + f * self.attention(pooled)


class ZeroStateConvLSTM(nn.Module):
    """One step of a conv LSTM from a zero state (h = c = 0), as the official code runs it.

    The stored conv maps ``concat[x, h]`` (cin + nf channels) to the 4·nf gates i, j, f, o. With a zero state
    the h-input weights and the forget gate cannot affect the output, so ``fast=True`` convolves only the
    x-path of i, j, o (a slice of the same weight); ``fast=False`` computes the literal cell. Both agree to
    float rounding; the stored weights are identical so checkpoints are interchangeable.
    """

    def __init__(self, cin: int, nf: int, fast: bool = True, forget_bias: float = 1.0) -> None:
        super().__init__()
        self.cin, self.nf, self.fast, self.forget_bias = cin, nf, fast, forget_bias
        self.conv = nn.Conv2d(cin + nf, 4 * nf, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×cin×H×W -> B×nf×H×W`` (the new hidden state)."""
        return self._fast(x) if self.fast else self._literal(x)

    def _fast(self, x: torch.Tensor) -> torch.Tensor:
        nf, w, b = self.nf, self.conv.weight, self.conv.bias
        live = torch.cat([w[: 2 * nf, : self.cin], w[3 * nf :, : self.cin]])
        live_b = torch.cat([b[: 2 * nf], b[3 * nf :]])
        i, j, o = F.conv2d(x, live, live_b, padding=1).chunk(3, dim=1)
        c = torch.sigmoid(i) * torch.tanh(j)
        return torch.tanh(c) * torch.sigmoid(o)

    def _literal(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        hidden = x.new_zeros(b, self.nf, h, w)
        cell = x.new_zeros(b, self.nf, h, w)
        i, j, f, o = self.conv(torch.cat([x, hidden], dim=1)).chunk(4, dim=1)
        cell = cell * torch.sigmoid(f + self.forget_bias) + torch.sigmoid(i) * torch.tanh(j)
        return torch.tanh(cell) * torch.sigmoid(o)


class CoarseFusion(nn.Module):
    """CFM at one scale: conv→PReLU → ConvLSTM → conv→PReLU on the fused input, plus the scale's own feature.

    The residual adds the *unfused* shallow feature, as the official graph does (``res2_lstmout += rain2``,
    ``res_lstmout += rain1``), not the fused input the branch reads (``rain2_e``, ``rain1_e``).
    """

    def __init__(self, channels: int, mid: int, nf: int, fast: bool) -> None:
        super().__init__()
        self.reduce = ConvAct(channels, mid)
        self.lstm = ZeroStateConvLSTM(mid, nf, fast=fast)
        self.expand = ConvAct(nf, channels)

    def forward(self, fused: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        """``fused`` = shallow feature + upsampled coarser results, ``shallow`` = this scale's own feature
        (both ``B×C×H×W``); at the coarsest scale they are the same tensor."""
        return shallow + self.expand(self.lstm(self.reduce(fused)))


class ScaleBranch(nn.Module):
    """FFM work at one scale: stride-2 conv, N RCABs at half resolution, transposed conv of concat[d, r]."""

    def __init__(self, channels: int, n_rcab: int, reduction: int) -> None:
        super().__init__()
        self.down = ConvAct(channels, channels, "down")
        self.rcabs = nn.Sequential(*[RCAB(channels, reduction) for _ in range(n_rcab)])
        self.up = ConvAct(2 * channels, channels, "up")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the increment for this scale's state (same shape as ``x``)."""
        d = self.down(x)
        return self.up(torch.cat([d, self.rcabs(d)], dim=1))


class FineFusionUnit(nn.Module):
    """One of the M cascaded FFM units: updates the (1/4, 1/2, full) states coarse to fine."""

    def __init__(self, channels: int, rcabs: Sequence[int], reduction: int) -> None:
        super().__init__()
        self.branch4 = ScaleBranch(channels, rcabs[0], reduction)
        self.up42 = ConvAct(channels, channels, "up")
        self.branch2 = ScaleBranch(channels, rcabs[1], reduction)
        self.up41 = ConvAct(channels, channels, "up")
        self.up21 = ConvAct(channels, channels, "up")
        self.branch1 = ScaleBranch(channels, rcabs[2], reduction)

    def forward(
        self, r4: torch.Tensor, r2: torch.Tensor, r1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r4 = r4 + self.branch4(r4)
        u = self.up42(r4)
        r2 = r2 + self.branch2(r2 + u)
        r1 = r1 + self.branch1(r1 + self.up41(u) + self.up21(r2))
        return r4, r2, r1


class MSPFN(nn.Module):
    """MSPFN derainer: ``B×3×H×W`` RGB float in [0, 1] -> derained ``B×3×H×W`` (not clamped).

    Internally works on [-1, 1] and predicts the rain layer (output = input − rain). H and W are
    reflect-padded to multiples of 8 and cropped back, so any size works.
    """

    size_multiple = 8
    # Tiled inference (derain.inference): neighbouring tiles share 128 px. The demo's mspfn-lite on 1200×800 COCO
    # photos (tile 512, bench/tiling_error.py) stays within 1 of 255 levels of the whole-image output at 128 with
    # exact statistics; at 64 it differs by up to 7 levels on 0.1 % of the values.
    tile_overlap = 128
    # bf16 autocast costs nothing measurable (bench/amp_psnr.py, the demo's mspfn-lite, all 100 Rain100L pairs:
    # 28.803 dB fp32 vs 28.809 dB bf16), so inference_policy turns it on for CUDA GPUs with bf16.
    bf16_inference = True
    # Revision 2 (derainbench 0.2.0): the coarse fusion adds back the scale's own shallow feature, as the
    # official graph does. Revision-1 checkpoints (no "arch_revision" in model.json) were trained with the fused
    # input added back instead; they still load, with a warning, but compute another function than trained.
    arch_revision = 2
    arch_revision_note = ("before derainbench 0.2.0 MSPFN's coarse fusion added back the fused input instead of "
                          "the scale's own shallow feature (the official graph); weights trained on that wiring "
                          "give different outputs now: retrain or fine-tune them")

    def __init__(
        self,
        channels: int = 64,
        cfm_channels: int = 32,
        lstm_channels: Sequence[int] = (64, 128, 256),
        units: int = 17,
        rcabs: Sequence[int] = (1, 3, 3),
        reduction: int = 4,
        recon_channels: int = 32,
        fast: bool = True,
    ) -> None:
        super().__init__()
        ch = self.channels = channels
        self.shallow = nn.ModuleList([ConvAct(3, ch) for _ in range(3)])  # full, 1/2, 1/4
        self.cfm = nn.ModuleList(
            [CoarseFusion(ch, cfm_channels, nf, fast) for nf in reversed(tuple(lstm_channels))]
        )  # full, 1/2, 1/4 (lstm_channels is given coarse->fine)
        self.up_c4 = ConvAct(ch, ch, "up")  # 1/4 -> 1/2
        self.up_c4_full = ConvAct(ch, ch, "up")  # (1/4 -> 1/2) -> full
        self.up_c2 = ConvAct(ch, ch, "up")  # 1/2 -> full
        self.units = nn.ModuleList([FineFusionUnit(ch, rcabs, reduction) for _ in range(units)])
        self.fuse = nn.ModuleList([ConvAct(2 * ch, ch) for _ in range(3)])  # full, 1/2, 1/4
        self.rec_up4 = ConvAct(ch, ch, "up")
        self.rec_up2 = ConvAct(2 * ch, ch, "up")
        self.rec_mix = ConvAct(2 * ch, recon_channels)
        self.rec_out = nn.Conv2d(recon_channels, 3, 3, padding=1, bias=False)
        self._collector: TileStatistics | None = None
        self._init_weights()

    @property
    def compile_on_cpu(self) -> bool:
        """Whether :func:`derain.runtime.inference_policy` compiles this model on CPU by default: at the paper's
        width (64 channels), where torch.compile measured 1.5x faster (mspfn-m17n1, 480×320, 2 cores: it fuses the
        full-resolution PReLU/add chains and LSTM gates); not for mspfn-lite (1.07-1.16x, which on typical folders
        saves less time than the ~28 s compile costs)."""
        return self.channels >= 64

    @property
    def fast(self) -> bool:
        return all(m.fast for m in self.modules() if isinstance(m, ZeroStateConvLSTM))

    @fast.setter
    def fast(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, ZeroStateConvLSTM):
                m.fast = value

    def _init_weights(self) -> None:
        """As the official code: Xavier-uniform convs (RCAB biases 0), ConvLSTM convs truncated normal
        σ = 1e-3 (cut at 2σ, TF's truncated_normal_initializer) with zero bias; PReLU alphas 0."""
        lstm_convs = {id(m.conv) for m in self.modules() if isinstance(m, ZeroStateConvLSTM)}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                if id(m) in lstm_convs:
                    nn.init.trunc_normal_(m.weight, std=1e-3, a=-2e-3, b=2e-3)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @contextmanager
    def tile_context(self, image: torch.Tensor, max_side: int = 512) -> Iterator[None]:
        """Within this context every forward uses the channel-attention statistics of ``image``.

        ``image`` (``1×3×H×W`` in [0, 1], the whole picture) is area-downscaled so its longer side is at most
        ``max_side`` (bounded memory) and run once; each RCAB records its pooled features. Tiles then share
        those global statistics instead of pooling over themselves, which keeps tiled output close to the
        untiled one (DESIGN §6).
        """
        if image.shape[0] != 1:
            raise ValueError(f"tile_context takes one image (1×3×H×W), got {tuple(image.shape)}")
        scale = max_side / max(image.shape[-2:])
        if scale < 1:
            size = (max(8, round(image.shape[-2] * scale)), max(8, round(image.shape[-1] * scale)))
            image = F.interpolate(image, size=size, mode="area")
        rcabs = [m for m in self.modules() if isinstance(m, RCAB)]
        try:
            for m in rcabs:
                m.mode = "record"
            with torch.inference_mode():
                self(image)
            for m in rcabs:
                m.mode = "replay"
            yield
        finally:
            for m in rcabs:
                m.mode, m.pooled = None, None

    @contextmanager
    def collect_tile_statistics(self, height: int, width: int) -> Iterator[TileStatistics]:
        """Inside :meth:`tile_context`: a tiled pass over a ``height × width`` image that gathers each RCAB's exact
        whole-image statistics from the tiles (set ``.cores`` before every call, see :class:`TileStatistics`).

        Forwards keep replaying the current statistics; on leaving, the gathered means replace them. One such pass
        turns the downscaled-image approximation into statistics computed at full resolution (each block's mean
        still sees upstream blocks attend with the previous statistics, so a second pass refines further).
        """
        rcabs = [m for m in self.modules() if isinstance(m, RCAB)]
        if any(m.mode != "replay" for m in rcabs):
            raise RuntimeError("collect_tile_statistics refines the statistics of tile_context: call it inside")
        stats = TileStatistics(height, width, self.size_multiple)
        self._collector = stats
        for m in rcabs:
            m.collector = stats
        try:
            yield stats
            means = stats.means()
            if set(means) != set(rcabs):
                raise RuntimeError("a tiled statistics pass ran no tiles through the model")
            for m in rcabs:
                m.pooled = means[m]
        finally:
            self._collector = None
            for m in rcabs:
                m.collector = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, self.size_multiple)
        if self._collector is not None:
            self._collector.input_height = x.shape[-2]
        return crop_to((self.forward_signed(x * 2 - 1) + 1) / 2, size)

    def forward_signed(self, x1: torch.Tensor) -> torch.Tensor:
        """Core network on ``B×3×H×W`` in [-1, 1] with H, W multiples of 8; returns ``x1 − rain``."""
        x2, x4 = F.avg_pool2d(x1, 2), F.avg_pool2d(x1, 4)
        f1, f2, f4 = (s(x) for s, x in zip(self.shallow, (x1, x2, x4), strict=True))
        cfm1, cfm2, cfm4 = self.cfm
        c4 = cfm4(f4, f4)
        u4 = self.up_c4(c4)
        c2 = cfm2(f2 + u4, f2)
        c1 = cfm1(f1 + self.up_c2(c2) + self.up_c4_full(u4), f1)
        r4, r2, r1 = c4, c2, c1
        for unit in self.units:
            r4, r2, r1 = unit(r4, r2, r1)
        fuse1, fuse2, fuse4 = self.fuse
        r4 = fuse4(torch.cat([r4, c4], dim=1))
        r2 = fuse2(torch.cat([r2, c2], dim=1))
        r1 = fuse1(torch.cat([r1, c1], dim=1))
        t = self.rec_up2(torch.cat([self.rec_up4(r4), r2], dim=1))
        rain = self.rec_out(self.rec_mix(torch.cat([r1, t], dim=1)))
        return x1 - rain


# Named configurations. ``mspfn``: the training code (RCAB 1/3/3, 20,995,776 parameters);
# ``mspfn-m17n1``: the released model (RCAB 1/1/1, 15,823,424); ``mspfn-lite``: a CPU-trainable variant.
CONFIGS: dict[str, dict] = {
    "mspfn": dict(channels=64, cfm_channels=32, lstm_channels=(64, 128, 256), units=17, rcabs=(1, 3, 3)),
    "mspfn-m17n1": dict(channels=64, cfm_channels=32, lstm_channels=(64, 128, 256), units=17, rcabs=(1, 1, 1)),
    "mspfn-lite": dict(channels=32, cfm_channels=16, lstm_channels=(16, 32, 32), units=4, rcabs=(1, 1, 1)),
}


@register_model("mspfn")
def mspfn(**overrides) -> MSPFN:
    """MSPFN as trained by the official code (M = 17 units, RCABs 1/3/3)."""
    return MSPFN(**{**CONFIGS["mspfn"], **overrides})


@register_model("mspfn-m17n1")
def mspfn_m17n1(**overrides) -> MSPFN:
    """MSPFN as released by the authors ("M17N1": one RCAB per scale)."""
    return MSPFN(**{**CONFIGS["mspfn-m17n1"], **overrides})


@register_model("mspfn-lite")
def mspfn_lite(**overrides) -> MSPFN:
    """Same architecture, 32 channels and 4 units: trains to visible effect in minutes on a CPU."""
    return MSPFN(**{**CONFIGS["mspfn-lite"], **overrides})
