"""The authors' MSPFN weights (TensorFlow 1) as one of our checkpoints: ``convert_mspfn(SRC, DIR)``.

SRC is an official TF checkpoint (the prefix of its ``.index``/``.data-*`` files, e.g. the released
``epoch44``) or a ``variables.npz`` of the same variables by TF name. The variant is read off the names:
the official code has three graph files that name the same structure differently —

    model/MSPFN.py              training graph     scope ``model/``      units ``URAB4_n`` ... ``upURAB4_2_n``
    model/TEST_MSPFN.py         test, RCABs 1/3/3  scope ``generator/``  units ``URAB*``
    model/TEST_MSPFN_M17N1.py   released model     scope ``generator/``  units ``BCM*``  ... ``upBCM4_2_n``

— and units, RCABs per scale and widths from the names and shapes. Every variable must be used exactly once
(optimizer slots such as ``.../Adam`` and ``global_step`` are ignored and counted). Porting (DESIGN §2):
TF ``Conv2D`` kernels ``[kh, kw, in, out]`` → ``[out, in, kh, kw]``; ``conv2d_transpose`` kernels
``[kh, kw, out, in]`` → ``ConvTranspose2d`` ``[in, out, kh, kw]`` (stride 2, same SAME alignment as our
``ConvUp``) or, for the stride-1 ``deconv_layer`` that is an ``nn.Conv2d`` here, spatially flipped
``[out, in, kh, kw]``; BGR (cv2) → RGB on the input of the three shallow convs and the output of the last.
The [-1, 1] range is the model's own (``MSPFN.forward`` maps [0, 1] in and out).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from derain.checkpoint import CheckpointError, save_checkpoint
from derain.registry import build_model

# Variables a training checkpoint holds beside the weights: optimizer slots and counters.
_IGNORED = re.compile(r"(^|/)(global_step|beta[12]_power(_\d+)?)$|/(Adam|Adam_\d+|Momentum|RMSProp(_\d+)?|"
                      r"ExponentialMovingAverage)$")
# Which official graph file names its variables this way: (scope, unit prefix) -> file.
GRAPHS = {
    ("model", "URAB"): "model/MSPFN.py (training graph)",
    ("generator", "URAB"): "model/TEST_MSPFN.py",
    ("generator", "BCM"): "model/TEST_MSPFN_M17N1.py (the released checkpoint's graph)",
}
_BASES = ("mspfn-m17n1", "mspfn")  # registered configs a converted model is expressed against


class ConversionError(CheckpointError):
    """Variables that do not fit the MSPFN graph; the message lists the missing, unexpected and mis-shaped ones."""


@dataclass
class Converted:
    """Result of a conversion: the model (eval mode, CPU) and how it was read."""

    model: nn.Module
    name: str  # registered base name (``mspfn-m17n1`` or ``mspfn``)
    config: dict[str, Any]  # overrides of that base config (e.g. ``{"units": 2}``)
    source: dict[str, Any] = field(default_factory=dict)  # format, graph file, scope, counts


def read_tf_variables(src: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """``({TF name: array}, format)`` from a ``.npz`` of variables or a TF checkpoint (prefix, file or folder)."""
    from derain.tfcheckpoint import is_tf_checkpoint, read_tf_checkpoint

    path = Path(src)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"variables file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: np.asarray(npz[k]) for k in npz.files}, "npz"
        except (ValueError, OSError) as exc:
            raise ConversionError(f"{path}: not a readable .npz of arrays ({exc})") from exc
    if is_tf_checkpoint(path):
        return read_tf_checkpoint(path), "tf-checkpoint"
    raise FileNotFoundError(
        f"{src}: neither a variables .npz nor a TF checkpoint (expected the prefix of PREFIX.index + "
        "PREFIX.data-00000-of-00001, e.g. .../epoch44, or a folder holding one)")


def convert_mspfn(src: str | Path, rgb: bool = True) -> Converted:
    """Read the official MSPFN weights at ``src`` into our model (see the module docstring).

    ``rgb=False`` keeps the authors' BGR channel order (the model then expects BGR input, as cv2 reads it).
    """
    variables, fmt = read_tf_variables(src)
    converted = mspfn_from_tf_variables(variables, rgb=rgb)
    converted.source = {"path": str(src), "format": fmt, **converted.source}
    return converted


def save_converted(converted: Converted, out: str | Path) -> Path:
    """Write ``out/model.safetensors`` + ``out/model.json`` (our ordinary checkpoint folder)."""
    extra = {"converted_from": converted.source}
    return save_checkpoint(out, converted.model, name=converted.name, config=converted.config, step=0, extra=extra)


def mspfn_from_tf_variables(variables: Mapping[str, np.ndarray], rgb: bool = True) -> Converted:
    """Build the MSPFN variant the TF variable names describe and load them into it."""
    weights = {k: v for k, v in variables.items() if not _IGNORED.search(k)}
    ignored = sorted(set(variables) - set(weights))
    scope, unit = _scope_and_unit(weights)
    arch = _infer_arch(weights, scope, unit)
    name, config = _as_registered(arch, prefer="mspfn-m17n1" if unit == "BCM" else "mspfn")
    model = build_model(name, **config)
    table = _name_table(scope, unit, arch["units"], arch["rcabs"])
    state = _convert_state(weights, table, model, rgb)
    model.load_state_dict(state, strict=True)
    source = {"graph": GRAPHS.get((scope, unit), f"scope {scope}/, units {unit}*"), "scope": scope,
              "unit_prefix": unit, "variables": len(weights), "ignored_variables": len(ignored),
              "channel_order": "RGB" if rgb else "BGR (as the official cv2 test script)",
              "parameters": sum(int(p.numel()) for p in model.parameters())}
    return Converted(model.eval(), name, config, source)


# -- what the names say ----------------------------------------------------------------------------------------
def _scope_and_unit(weights: Mapping[str, np.ndarray]) -> tuple[str, str]:
    if not weights:
        raise ConversionError("no variables to convert (empty checkpoint, or only optimizer slots)")
    scopes = sorted({k.split("/", 1)[0] for k in weights})
    if len(scopes) != 1:
        raise ConversionError(f"variables under several top-level scopes ({', '.join(scopes[:6])}); an MSPFN "
                              "checkpoint has one (generator/ or model/)")
    scope = scopes[0]
    if f"{scope}/rnn1/weight" not in weights:
        raise ConversionError(f"not an MSPFN checkpoint: no {scope}/rnn1/weight (the first shallow conv); "
                              f"found e.g. {', '.join(sorted(weights)[:4])}")
    units = {m.group(1) for k in weights if (m := re.match(rf"{re.escape(scope)}/(URAB|BCM)4_\d+/", k))}
    if len(units) != 1:
        raise ConversionError(f"cannot tell the fusion-unit naming (found {sorted(units) or 'no URAB4_*/BCM4_*'} "
                              f"under {scope}/)")
    return scope, units.pop()


def _infer_arch(weights: Mapping[str, np.ndarray], scope: str, unit: str) -> dict[str, Any]:
    """Units, RCABs per scale (1/4, 1/2, full) and widths from the names and shapes."""

    def shape(rel: str) -> tuple[int, ...]:
        key = f"{scope}/{rel}"
        if key not in weights:
            raise ConversionError(f"missing variable {key} (needed to infer the architecture)")
        return tuple(weights[key].shape)

    units = 0
    while f"{scope}/{unit}4_{units}/down4_{units + 1}/weight" in weights:
        units += 1
    if units == 0:
        raise ConversionError(f"no fusion units: {scope}/{unit}4_0/down4_1/weight is missing")
    rcabs = []
    for s in ("4", "2", ""):
        n = 0
        while f"{scope}/{unit}{s}_0/group_1_RCAB{n + 1}/conv2d/kernel" in weights:
            n += 1
        rcabs.append(n)
    channels = shape("rnn1/weight")[2]
    rcab_hidden = shape(f"{unit}4_0/group_1_RCAB1/conv2d_2/kernel")[3] if rcabs[0] else channels // 4
    return {
        "channels": channels,
        "cfm_channels": shape("residual_memory/rain4_res1/weight")[2],
        "lstm_channels": [shape(f"residual_memory/lstm_group{s}/convLSTM/LSTM_conv/biases")[0] // 4
                          for s in ("4", "2", "")],
        "units": units,
        "rcabs": rcabs,
        "reduction": channels // max(rcab_hidden, 1),
        "recon_channels": shape("rnn5/weight")[2],
    }


def _as_registered(arch: dict[str, Any], prefer: str) -> tuple[str, dict[str, Any]]:
    """The registered base config closest to ``arch`` (``prefer`` on a tie) and the overrides that make it
    ``arch``."""
    from derain.models.mspfn import CONFIGS, MSPFN

    defaults = {k: p.default for k, p in inspect.signature(MSPFN).parameters.items()}

    def diff(base: str) -> dict[str, Any]:
        ref = {**defaults, **CONFIGS[base]}
        return {k: v for k, v in arch.items() if list(np.atleast_1d(ref[k])) != list(np.atleast_1d(v))}

    base = min(sorted(_BASES, key=lambda b: b != prefer), key=lambda b: len(diff(b)))
    return base, diff(base)


def _name_table(scope: str, unit: str, units: int, rcabs: list[int]) -> dict[str, tuple[str, str]]:
    """``{our parameter name: (TF variable name, TF op)}``; op is ``conv`` (Conv2D), ``deconv``
    (conv2d_transpose), ``vector`` (bias / PReLU alpha)."""
    table: dict[str, tuple[str, str]] = {}

    def conv_act(ours: str, tf: str, op: str) -> None:  # our ConvAct = Sequential(conv, PReLU)
        table[f"{ours}.0.weight"] = (f"{scope}/{tf}/weight", op)
        table[f"{ours}.1.weight"] = (f"{scope}/{tf}/alpha", "vector")

    def rcab(ours: str, tf: str) -> None:
        for conv, ours_conv in (("conv2d", "body.0"), ("conv2d_1", "body.2"), ("conv2d_2", "attention.0"),
                                ("conv2d_3", "attention.2")):
            table[f"{ours}.{ours_conv}.weight"] = (f"{scope}/{tf}/{conv}/kernel", "conv")
            table[f"{ours}.{ours_conv}.bias"] = (f"{scope}/{tf}/{conv}/bias", "vector")
        table[f"{ours}.body.1.weight"] = (f"{scope}/{tf}/conv2d/alpha", "vector")
        table[f"{ours}.attention.1.weight"] = (f"{scope}/{tf}/conv2d_2/alpha", "vector")

    for i, s in enumerate(("1", "2", "4")):  # shallow: full, 1/2, 1/4
        conv_act(f"shallow.{i}", f"rnn{s}", "deconv")
    for i, s in enumerate(("", "2", "4")):  # coarse fusion: full, 1/2, 1/4
        rm = "residual_memory"
        conv_act(f"cfm.{i}.reduce", f"{rm}/rain{s}_res1", "deconv")
        conv_act(f"cfm.{i}.expand", f"{rm}/rain{s}_res2", "deconv")
        lstm = f"{scope}/{rm}/lstm_group{s}/convLSTM/LSTM_conv"
        table[f"cfm.{i}.lstm.conv.weight"] = (f"{lstm}/weights", "conv")
        table[f"cfm.{i}.lstm.conv.bias"] = (f"{lstm}/biases", "vector")
    conv_act("up_c4", "residual_memory/upRMM4_2", "deconv")
    conv_act("up_c4_full", "residual_memory/upRMM4_1", "deconv")
    conv_act("up_c2", "residual_memory/upRMM2_1", "deconv")
    for n in range(units):
        u = f"units.{n}"
        for s, branch, down in (("4", "branch4", "down4"), ("2", "branch2", "down2"), ("", "branch1", "down")):
            block = f"{unit}{s}_{n}"
            conv_act(f"{u}.{branch}.down", f"{block}/{down}_{n + 1}", "conv")
            conv_act(f"{u}.{branch}.up", f"{block}/up_{n + 1}", "deconv")
            for m in range(rcabs[("4", "2", "").index(s)]):
                rcab(f"{u}.{branch}.rcabs.{m}", f"{block}/group_{n + 1}_RCAB{m + 1}")
        conv_act(f"{u}.up42", f"{unit}2_{n}/up{unit}4_2_{n}", "deconv")
        conv_act(f"{u}.up41", f"{unit}_{n}/up{unit}4to1_{n}", "deconv")
        conv_act(f"{u}.up21", f"{unit}_{n}/up{unit}2to1_{n}", "deconv")
    for i, s in enumerate(("", "2", "4")):
        conv_act(f"fuse.{i}", f"rnn_recon{s}", "deconv")
    conv_act("rec_up4", "up4_2", "deconv")
    conv_act("rec_up2", "up2_1", "deconv")
    conv_act("rec_mix", "rnn5", "deconv")
    table["rec_out.weight"] = (f"{scope}/rnn7/weight", "deconv")  # the last conv: linear, no PReLU
    return table


# -- the arrays -------------------------------------------------------------------------------------------------
def _convert_state(weights: Mapping[str, np.ndarray], table: dict[str, tuple[str, str]], model: nn.Module,
                   rgb: bool) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    modules = dict(model.named_modules())
    missing = sorted(tf for tf, _ in table.values() if tf not in weights)
    unexpected = sorted(set(weights) - {tf for tf, _ in table.values()})
    not_ours = sorted(set(own) - set(table))  # a table/model disagreement: a bug here, not in the file
    if not_ours:
        raise ConversionError(f"internal: no TF source for {', '.join(not_ours[:6])}")
    state: dict[str, torch.Tensor] = {}
    mis_shaped: list[str] = []
    for ours, (tf, op) in table.items():
        if tf not in weights:
            continue
        module = modules[ours.rsplit(".", 1)[0]]
        arr = _to_torch_layout(np.asarray(weights[tf], dtype=np.float32), op, module)
        if arr is None or tuple(arr.shape) != tuple(own[ours].shape):
            mis_shaped.append(f"{tf} {tuple(weights[tf].shape)} for {ours} {tuple(own[ours].shape)}")
            continue
        state[ours] = torch.from_numpy(np.ascontiguousarray(arr))
    if missing or unexpected or mis_shaped:
        parts = ["the variables do not fit the MSPFN graph their names describe:"]
        if missing:
            parts.append(f"missing ({len(missing)}): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected ({len(unexpected)}): {_preview(unexpected)}")
        if mis_shaped:
            parts.append(f"mis-shaped ({len(mis_shaped)}): {'; '.join(mis_shaped[:4])}"
                         + (" ..." if len(mis_shaped) > 4 else ""))
        raise ConversionError("\n  ".join(parts))
    if rgb:  # cv2's BGR -> RGB: input channels of the shallow convs, output channels of the last conv
        for i in range(3):
            state[f"shallow.{i}.0.weight"] = state[f"shallow.{i}.0.weight"].flip(1).contiguous()
        state["rec_out.weight"] = state["rec_out.weight"].flip(0).contiguous()
    return state


def _to_torch_layout(arr: np.ndarray, op: str, module: nn.Module) -> np.ndarray | None:
    """TF array -> the layout of ``module``'s parameter; None when the rank is wrong."""
    if op == "vector":
        return arr if arr.ndim == 1 else None
    if arr.ndim != 4:
        return None
    if op == "conv":  # Conv2D [kh, kw, in, out] -> [out, in, kh, kw]
        return arr.transpose(3, 2, 0, 1)
    if isinstance(module, nn.ConvTranspose2d):  # conv2d_transpose [kh, kw, out, in] -> [in, out, kh, kw]
        return arr.transpose(3, 2, 0, 1)
    # stride-1 conv2d_transpose as a plain conv: flip the kernel, [kh, kw, out, in] -> [out, in, kh, kw]
    return arr[::-1, ::-1].transpose(2, 3, 0, 1)


def _preview(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")


def describe(converted: Converted) -> str:
    """Two lines for the CLI: what was read and what was built."""
    s = converted.source
    ignored = f", {s['ignored_variables']} optimizer/counter variables ignored" if s.get("ignored_variables") else ""
    cfg = json.dumps(converted.config) if converted.config else "{}"
    return (f"{s.get('path', '?')} ({s.get('format', '?')}): {s['variables']} variables of {s['graph']}{ignored}\n"
            f"  -> {converted.name} {cfg}: {s['parameters']:,} parameters, input {s['channel_order']}")


__all__ = ["GRAPHS", "ConversionError", "Converted", "convert_mspfn", "describe", "mspfn_from_tf_variables",
           "read_tf_variables", "save_converted"]
