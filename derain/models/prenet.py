"""PReNet (Ren et al., CVPR 2019, "Progressive Image Deraining Networks"), registered as ``prenet``.

A small network unrolled over ``stages`` stages that share weights. Each stage sees the rainy input ``y``
concatenated with the previous estimate ``x``, passes it through a conv, a ConvLSTM (``recurrent=True``;
PRN without it), five residual blocks and a final conv, and adds ``y`` back::

    x = y; h = c = 0
    repeat stages times:
        x = relu(conv0(cat(y, x)))
        i, f, o = sigmoid(conv_{i,f,o}(cat(x, h))); g = tanh(conv_g(cat(x, h)))
        c = f * c + i * g; h = o * tanh(c); x = h
        x = relu(res_conv_k(x) + x)  for k = 1..5   (res_conv_k = conv-ReLU-conv-ReLU)
        x = conv(x) + y

Module names match the authors' released state dicts (``conv0.0.weight``, ``res_conv1.2.bias``,
``conv_i.0.weight``, ``conv.0.weight`` ...), so e.g. ``PReNet_Rain100L_PReNet6.pth`` (168,963 parameters)
loads with :func:`derain.checkpoint.load_weights` unchanged.

Every conv is 3×3 with padding 1, so the network is fully convolutional: any H×W works without padding,
and zero padding at the image border means a tile touching the border sees exactly what the whole image
sees there. Receptive field: 13 convs per stage on the longest path (conv0, gate, 10 residual, output),
so ``13 * stages`` pixels of context on each side (78 for 6 stages).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from derain.registry import register_model

RES_BLOCKS = 5
CONVS_PER_STAGE = 3 + 2 * RES_BLOCKS  # conv0, one LSTM gate conv, residual convs, output conv


def _conv(cin: int, cout: int, act: nn.Module | None = None) -> nn.Sequential:
    """3×3 conv (padding 1) optionally followed by an activation; Sequential keeps the ``.0`` key names."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 1, 1)]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


@register_model("prenet")
class PReNet(nn.Module):
    """PReNet / PRN: ``B×3×H×W`` float RGB in [0, 1] -> derained ``B×3×H×W``.

    In eval mode the output is clamped to [0, 1] (as the authors do at test time); in training mode it is
    left unclamped so the loss sees (and gradients flow through) values outside the range.
    """

    # bf16 autocast costs nothing measurable (bench/amp_psnr.py, authors' Rain100L weights, all 100 Rain100L pairs:
    # 37.591 dB fp32 vs 37.588 dB bf16), so inference_policy turns it on for CUDA GPUs with bf16.
    bf16_inference = True

    def __init__(self, stages: int = 6, channels: int = 32, recurrent: bool = True) -> None:
        super().__init__()
        if stages < 1 or channels < 1:
            raise ValueError(f"stages and channels must be positive, got {stages=} {channels=}")
        self.stages = stages
        self.channels = channels
        self.recurrent = recurrent
        self.conv0 = _conv(6, channels, nn.ReLU())
        for k in range(1, RES_BLOCKS + 1):
            block = nn.Sequential(
                nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU()
            )
            self.add_module(f"res_conv{k}", block)
        if recurrent:
            self.conv_i = _conv(2 * channels, channels, nn.Sigmoid())
            self.conv_f = _conv(2 * channels, channels, nn.Sigmoid())
            self.conv_g = _conv(2 * channels, channels, nn.Tanh())
            self.conv_o = _conv(2 * channels, channels, nn.Sigmoid())
        self.conv = _conv(channels, 3)

    @property
    def receptive_radius(self) -> int:
        """Pixels of context each output pixel depends on, per side (``13 * stages``; PRN: ``12 * stages``)."""
        return (CONVS_PER_STAGE - (0 if self.recurrent else 1)) * self.stages

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y``: ``B×3×H×W`` rainy RGB in [0, 1] -> ``B×3×H×W`` derained (clamped to [0, 1] in eval mode)."""
        return self.forward_stages(y)[-1]

    def forward_stages(self, y: torch.Tensor) -> list[torch.Tensor]:
        """The estimate after every stage (list of ``stages`` tensors ``B×3×H×W``), last one = output.

        Only the last is clamped (eval mode); the intermediate ones are what the next stage consumes.
        """
        x = y
        h: torch.Tensor | None = None
        c: torch.Tensor | None = None
        gate_w, gate_b = self._gate_params() if self.recurrent else (None, None)
        outputs: list[torch.Tensor] = []
        for _ in range(self.stages):
            x = self.conv0(torch.cat((y, x), dim=1))
            if self.recurrent:
                h, c = self._lstm(x, h, c, gate_w, gate_b)
                x = h
            for k in range(1, RES_BLOCKS + 1):
                x = F.relu(getattr(self, f"res_conv{k}")(x) + x)
            x = self.conv(x) + y
            outputs.append(x)
        if not self.training:
            outputs[-1] = outputs[-1].clamp(0.0, 1.0)
        return outputs

    def _gate_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The four gate convs stacked into one ``4C×2C×3×3`` conv (order i, f, g, o): one conv instead of four."""
        convs = (self.conv_i[0], self.conv_f[0], self.conv_g[0], self.conv_o[0])
        weight = torch.cat([m.weight for m in convs], dim=0)
        bias = torch.cat([m.bias for m in convs], dim=0)
        return weight, bias

    def _lstm(
        self, x: torch.Tensor, h: torch.Tensor | None, c: torch.Tensor | None,
        weight: torch.Tensor, bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ConvLSTM step on ``x`` (``B×C×H×W``); ``h = c = None`` is the zero initial state.

        With a zero ``h`` the h-half of the gate conv contributes nothing, so only the x-half of the weight is
        applied (same result, half the gate FLOPs in the first stage); likewise ``f * c`` is skipped.
        """
        if h is None:
            gates = F.conv2d(x, weight[:, : self.channels], bias, padding=1)
        else:
            gates = F.conv2d(torch.cat((x, h), dim=1), weight, bias, padding=1)
        i, f, g, o = gates.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = i * g if c is None else f * c + i * g
        h = o * torch.tanh(c)
        return h, c

    def forward_reference(self, y: torch.Tensor) -> torch.Tensor:
        """The literal computation (separate gate modules, explicit zero state), the check for :meth:`forward`."""
        b, _, height, width = y.shape
        x = y
        h = y.new_zeros(b, self.channels, height, width)
        c = y.new_zeros(b, self.channels, height, width)
        for _ in range(self.stages):
            x = self.conv0(torch.cat((y, x), dim=1))
            if self.recurrent:
                xh = torch.cat((x, h), dim=1)
                i, f, g, o = self.conv_i(xh), self.conv_f(xh), self.conv_g(xh), self.conv_o(xh)
                c = f * c + i * g
                h = o * torch.tanh(c)
                x = h
            for k in range(1, RES_BLOCKS + 1):
                x = F.relu(getattr(self, f"res_conv{k}")(x) + x)
            x = self.conv(x) + y
        return x if self.training else x.clamp(0.0, 1.0)
