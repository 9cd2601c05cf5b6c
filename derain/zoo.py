"""The derainer zoo: restoration checkpoints published by their authors (Restormer, MPRNet, NAFNet, ...), detected and
built by spandrel (chaiNNer's loader) and run by each architecture's own test protocol.

A zoo derainer is the authors' module itself (its state dict keys are the authors'), with a forward that applies the
test protocol spandrel encodes for the architecture: pad bottom/right by reflection to the size multiple the network
needs and crop back (Restormer's ``Deraining/test.py`` exactly; MPRNet's deraining test has no padding and is the
same on sizes it accepts), pick the image from a multi-output network (MPRNet: the first of its three stages) or
add an extra input (a noise-level map). Clamping to [0, 1] is the inference path's (:func:`derain.inference.
derain_tensor`), as in the authors' scripts, so training sees the unclamped output.

Registered as the derainer ``zoo`` with options ``arch`` (spandrel's architecture id) and ``hyperparameters`` (its
constructor's), so our checkpoint folders record a zoo model like any other. Files are read only through
:func:`derain.checkpoint.read_state_dict` (``weights_only=True``; never spandrel's own file loader, which would also
run TorchScript), and nothing is ever downloaded. ``spandrel-extra-arches`` (Restormer, MPRNet, MIRNet-v2, ... whose
original code is non-commercial) is the optional extra ``derainbench[zoo]``.
"""

from __future__ import annotations

import functools
import json
import math
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from derain.fileio import to_jsonable
from derain.registry import register_model

EXTRA_PACKAGE = "spandrel-extra-arches"
EXTRA_HINT = "pip install 'derainbench[zoo]' (or: pip install spandrel-extra-arches)"


class ZooError(ValueError):
    """A file spandrel cannot turn into a derainer; the message says why and what to supply."""


class LicenceNotice(UserWarning):
    """An architecture whose original code is licensed for non-commercial use only was loaded."""


@dataclass(frozen=True)
class ArchFacts:
    """What a user needs to cite and license an architecture, and where its authors publish weights."""

    paper: str
    year: int
    licence: str  # licence of the original code (spandrel-extra-arches ships it under those terms)
    non_commercial: bool
    code: str
    weights: str = ""  # where the authors publish derain weights ("" = none for deraining)
    published: str = ""  # the authors' published Rain100H / Rain100L PSNR/SSIM, with the source
    verified: str = ""  # the check that showed our path computes the authors' test output ("" = spandrel's word)


APL = "Academic Public License (non-commercial)"
FACTS: dict[str, ArchFacts] = {
    "Restormer": ArchFacts(
        "Restormer: Efficient Transformer for High-Resolution Image Restoration (Zamir et al., CVPR)", 2022, APL, True,
        "github.com/swz30/Restormer", "Restormer README: Deraining/pretrained_models/deraining.pth (Google Drive)",
        "Rain100H 31.46/0.904, Rain100L 38.99/0.978 (paper, Table 1)",
        "authors' Restormer code, seeded weights, Deraining/test.py path (../shared/data/zoo_oracle; "
        "bench/zoo_oracle.py at the released size)"),
    "MPRNet": ArchFacts(
        "Multi-Stage Progressive Image Restoration (Zamir et al., CVPR)", 2021, APL, True,
        "github.com/swz30/MPRNet", "MPRNet README: Deraining/pretrained_models/model_deraining.pth (Google Drive)",
        "Rain100H 30.41/0.890, Rain100L 36.40/0.965 (paper, Table 1)",
        "authors' MPRNet code, seeded weights, Deraining/test.py path (../shared/data/zoo_oracle; bench/zoo_oracle.py "
        "at the released size)"),
    "MIRNet2": ArchFacts("Learning Enriched Features for Fast Image Restoration and Enhancement (MIRNet-v2, Zamir et "
                         "al., TPAMI)", 2022, APL, True, "github.com/swz30/MIRNetv2"),
    "M3SNet": ArchFacts("A Mountain-Shaped Single-Stage Network for Accurate Image Restoration (M3SNet, Gao et al.)",
                        2023, "see the original repository (spandrel-extra-arches: non-commercial or copyleft)", True,
                        "github.com/Tombs98/M3SNet"),
    "NAFNet": ArchFacts("Simple Baselines for Image Restoration (NAFNet, Chen et al., ECCV)", 2022, "MIT", False,
                        "github.com/megvii-research/NAFNet"),
    "Uformer": ArchFacts("Uformer: A General U-Shaped Transformer for Image Restoration (Wang et al., CVPR)", 2022,
                         "MIT", False, "github.com/ZhendongWang6/Uformer"),
    "KBNet": ArchFacts("KBNet: Kernel Basis Network for Image Restoration (Zhang et al.)", 2023, "MIT", False,
                       "github.com/zhangyi-3/KBNet"),
    "FFTformer": ArchFacts("Efficient Frequency Domain-based Transformers for High-Quality Image Deblurring (Kong et "
                           "al., CVPR)", 2023, "MIT", False, "github.com/kkkls/FFTformer"),
    "SCUNet": ArchFacts("Practical Blind Image Denoising via Swin-Conv-UNet (Zhang et al., MIR)", 2023, "Apache-2.0",
                        False, "github.com/cszn/SCUNet"),
    "DRUNet": ArchFacts("Plug-and-Play Image Restoration with Deep Denoiser Prior (DPIR, Zhang et al., TPAMI)", 2021,
                        "MIT", False, "github.com/cszn/DPIR"),
    "DnCNN": ArchFacts("Beyond a Gaussian Denoiser (DnCNN, Zhang et al., TIP)", 2017, "MIT", False,
                       "github.com/cszn/KAIR"),
    "SwinIR": ArchFacts("SwinIR: Image Restoration Using Swin Transformer (Liang et al., ICCVW)", 2021, "Apache-2.0",
                        False, "github.com/JingyunLiang/SwinIR"),
}

# Paper and year of the other architectures spandrel knows (most are super-resolution or face models, which a
# derainer file cannot be: `derainbench models` lists them so a user can see what a file may hold).
PAPERS: dict[str, tuple[str, int]] = {
    "ESRGAN": ("ESRGAN (Wang et al., ECCVW)", 2018), "RCAN": ("RCAN (Zhang et al., ECCV)", 2018),
    "Compact": ("Real-ESRGAN Compact (Wang et al., ICCVW)", 2021), "SwinIR": ("SwinIR (Liang et al., ICCVW)", 2021),
    "Swin2SR": ("Swin2SR (Conde et al., ECCVW)", 2022), "HAT": ("HAT (Chen et al., CVPR)", 2023),
    "GRL": ("GRL (Li et al., CVPR)", 2023), "DAT": ("DAT (Chen et al., ICCV)", 2023),
    "OmniSR": ("Omni-SR (Wang et al., CVPR)", 2023), "SAFMN": ("SAFMN (Sun et al., ICCV)", 2023),
    "SRFormer": ("SRFormer (Zhou et al., ICCV)", 2023), "SPAN": ("SPAN (Wan et al., CVPRW)", 2024),
    "GFPGAN": ("GFPGAN (Wang et al., CVPR)", 2021), "RestoreFormer": ("RestoreFormer (Wang et al., CVPR)", 2022),
    "CodeFormer": ("CodeFormer (Zhou et al., NeurIPS)", 2022), "LaMa": ("LaMa (Suvorov et al., WACV)", 2022),
    "MAT": ("MAT (Li et al., CVPR)", 2022), "FBCNN": ("FBCNN (Jiang et al., ICCV)", 2021),
    "IPT": ("IPT (Chen et al., CVPR)", 2021), "RetinexFormer": ("Retinexformer (Cai et al., ICCV)", 2023),
    "DDColor": ("DDColor (Kang et al., ICCV)", 2023), "FeMaSR": ("FeMaSR (Chen et al., ACM MM)", 2022),
}

# Inference policy per architecture (derain.runtime.inference_policy reads these attributes; bench/zoo_speed.py and
# bench/zoo_oracle.py measured them, bench/RESULTS.md). Restormer: channels_last ran 1.18x faster on 2 CPU cores at
# 480×320 but moved the released configuration's output by up to 2.3e-3 (0.6 of an 8-bit level) from the authors'
# NCHW result, which our NCHW path reproduces exactly; exactness wins, --channels-last opts in.
# IPT's test-time chopping (forward_chop) reshapes the network's outputs with .view, which fails on NHWC tensors:
# it runs NCHW only (channels_last_ok = False: --channels-last is refused for it, derain.runtime.inference_policy).
POLICY: dict[str, dict[str, Any]] = {
    "Restormer": {"channels_last_on_cpu": False},
    "IPT": {"channels_last_on_cpu": False, "channels_last_ok": False},
}

# Keys that identify the extra package's derainers when it is not installed (a subset of spandrel's detection keys).
_EXTRA_SIGNATURES: dict[str, tuple[str, ...]] = {
    "Restormer": ("patch_embed.proj.weight", "encoder_level1.0.attn.temperature", "refinement.0.attn.temperature"),
    "MPRNet": ("shallow_feat1.0.weight", "sam12.conv1.weight", "stage3_orsnet.orb1.body.0.body.0.weight"),
    "MIRNet2": ("conv_in.weight", "body.0.body.0.dau_top.body.0.weight"),
}


def facts(arch: str, extra: bool | None = None) -> ArchFacts:
    """The :data:`FACTS` of ``arch``; for an architecture without an entry, what its spandrel package implies."""
    if arch in FACTS:
        return FACTS[arch]
    if extra is None:
        extra = arch in {s.architecture.id for s in _extra_supports()}
    paper, year = PAPERS.get(arch, (arch, 0))
    if extra:
        return ArchFacts(paper, year, "non-commercial or copyleft (spandrel-extra-arches; see the original "
                         "repository)", True, "see spandrel's README")
    return ArchFacts(paper, year, "permissive (spandrel: MIT, Apache-2.0 or public domain)", False,
                     "see spandrel's README")


# -- spandrel ---------------------------------------------------------------------------------------------------------
def _import_spandrel() -> Any:
    with warnings.catch_warnings():  # spandrel's import touches torch.jit.script, deprecated in recent torch
        warnings.simplefilter("ignore", FutureWarning)
        try:
            import spandrel
        except ImportError as exc:
            raise ZooError("the derainer zoo needs the package spandrel: pip install spandrel") from exc
    return spandrel


@functools.cache
def _extra_supports() -> tuple[Any, ...]:
    """spandrel-extra-arches' architectures, or () when the extra is not installed."""
    _import_spandrel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            import spandrel_extra_arches
        except ImportError:
            return ()
    return tuple(spandrel_extra_arches.EXTRA_REGISTRY)


@functools.cache
def zoo_registry() -> Any:
    """spandrel's architectures plus the extra package's when installed (a private copy: the global stays as is)."""
    spandrel = _import_spandrel()
    registry = spandrel.ArchRegistry()
    registry.add(*spandrel.MAIN_REGISTRY)
    registry.add(*_extra_supports(), ignore_duplicates=True)
    return registry


def extra_installed() -> bool:
    """Whether ``spandrel-extra-arches`` is importable here."""
    return bool(_extra_supports())


def zoo_architectures() -> list[str]:
    """Ids of every architecture spandrel can detect in this install (sorted, case-insensitively)."""
    return sorted((s.architecture.id for s in zoo_registry()), key=str.lower)


def arch_classes(arch: str) -> tuple[type[nn.Module], ...]:
    """The module class(es) spandrel builds for ``arch`` (from its ``Architecture[...]`` type argument)."""
    support = zoo_registry().get(arch)
    if support is None:
        missing = f"; it may need {EXTRA_HINT}" if arch in _EXTRA_SIGNATURES and not extra_installed() else ""
        raise ZooError(f"unknown zoo architecture {arch!r}{missing} (known here: {', '.join(zoo_architectures())})")
    for base in getattr(type(support.architecture), "__orig_bases__", ()):
        args = typing.get_args(base)
        if args:
            inner = typing.get_args(args[0]) or args  # Union[A, B] -> (A, B)
            return tuple(c for c in inner if isinstance(c, type))
    raise ZooError(f"spandrel's {arch} does not name its module class")


def describe_from_state(state: Mapping[str, torch.Tensor], where: str, arch: str | None = None) -> Any:
    """spandrel's model descriptor for a state dict (the architecture detected, or ``arch``'s; its hyperparameters
    deduced, the weights loaded). Refuses a state dict no architecture recognises and models that are not derainers."""
    spandrel = _import_spandrel()
    from spandrel import canonicalize_state_dict

    state = canonicalize_state_dict(dict(state))
    try:
        if arch is not None:
            support = zoo_registry().get(arch)
            if support is None:
                arch_classes(arch)  # raises the error that names what is known
            descriptor = support.architecture.load(state)
        else:
            descriptor = zoo_registry().load(state)
    except ZooError:
        raise
    except spandrel.UnsupportedModelError:
        needed = [a for a, keys in _EXTRA_SIGNATURES.items() if all(k in state for k in keys)]
        if needed and not extra_installed():
            raise ZooError(f"{where} holds a {needed[0]} checkpoint, whose architecture comes with the optional extra "
                           f"{EXTRA_PACKAGE} (non-commercial code): {EXTRA_HINT}") from None
        raise ZooError(f"{where} is not a derainbench checkpoint, does not fit a built-in derainer, and spandrel "
                       f"recognises none of its {len(zoo_registry().architectures())} architectures in it "
                       f"({len(state)} tensors, first key {next(iter(state), '-')!r}){_closest(state)}") from None
    except Exception as exc:  # detected, but the weights do not fit the deduced shapes
        raise ZooError(f"{where}: spandrel could not build the model: {type(exc).__name__}: "
                       f"{_one_line(str(exc))}") from exc
    check_derainer(descriptor, where)
    return descriptor


def check_derainer(descriptor: Any, where: str) -> None:
    """Refuse a spandrel descriptor that is not a derainer: a purpose other than restoration (super-resolution, face
    restoration, inpainting), an upscaling factor, other channel counts than RGB -> RGB, or extra inputs."""
    spandrel = _import_spandrel()
    problems = []
    purpose = getattr(descriptor, "purpose", "Restoration")
    if purpose != "Restoration" and not (purpose == "SR" and getattr(descriptor, "scale", 1) != 1):
        problems.append(f"its purpose is {_PURPOSES.get(purpose, purpose)} (spandrel: {purpose})")
    if getattr(descriptor, "scale", 1) != 1:
        problems.append(f"it upscales ×{descriptor.scale}")
    if (descriptor.input_channels, descriptor.output_channels) != (3, 3):
        problems.append(f"it maps {descriptor.input_channels} to {descriptor.output_channels} channels")
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        problems.append("it needs more inputs than an image (e.g. an inpainting mask)")
    if problems:
        raise ZooError(f"{where} holds a {descriptor.architecture.id} model, but not a derainer: "
                       f"{' and '.join(problems)} (a derainer restores an RGB image to an RGB image of the same "
                       "size: spandrel purpose Restoration)")


_PURPOSES = {"SR": "super-resolution", "FaceSR": "face restoration", "Inpainting": "inpainting"}


def _one_line(text: str, limit: int = 600) -> str:
    """A multi-line message (torch's 'Error(s) in loading state_dict for X:' then one line per problem) as one line,
    cut at ``limit`` characters."""
    line = "; ".join(part.strip() for part in text.splitlines() if part.strip()).replace(":;", ":")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _missing_keys(condition: Any, state: Mapping[str, Any]) -> tuple[list[str], int] | None:
    """The keys spandrel's detection ``condition`` (a ``KeyCondition`` tree) misses in ``state`` and how many of the
    keys it asks for are there (the fewest missing over ``has_any`` branches); None for a detection that is code."""
    from spandrel.util import KeyCondition

    if isinstance(condition, str):
        return ([], 1) if condition in state else ([condition], 0)
    if not isinstance(condition, KeyCondition):
        return None
    parts = [_missing_keys(c, state) for c in getattr(condition, "_keys", ())]
    if any(part is None for part in parts) or not parts:
        return None
    if getattr(condition, "_kind", "all") == "any":
        return min(parts, key=lambda part: (len(part[0]), -part[1]))  # type: ignore[arg-type, return-value]
    return [k for part in parts for k in part[0]], sum(part[1] for part in parts)  # type: ignore[union-attr]


def _closest(state: Mapping[str, Any]) -> str:
    """'; closest: X, whose detection also needs 'k' ...' for the architecture whose detection keys ``state`` nearly
    has (more of them present than missing), else ''."""
    best: tuple[int, int, str, list[str]] | None = None
    for support in zoo_registry():
        found = _missing_keys(getattr(support.architecture, "_detect", None), state)
        if found is None or not found[0] or found[1] <= len(found[0]):
            continue
        key = (len(found[0]), -found[1], support.architecture.id, found[0])
        best = key if best is None or key[:2] < best[:2] else best
    if best is None:
        return ""
    missing = ", ".join(repr(k) for k in best[3][:5]) + (" ..." if len(best[3]) > 5 else "")
    return f"; closest: {best[2]}, whose detection also needs {missing} (a damaged or edited file?)"


# -- the derainer -----------------------------------------------------------------------------------------------------
class ZooProtocol(nn.Module):
    """Mixin put in front of a zoo architecture's class: ``forward`` applies the architecture's test protocol.

    ``B×3×H×W`` float in [0, 1] -> ``B×3×H×W`` (unclamped; inference clamps). Attributes set by :func:`adopt`:
    ``zoo_arch`` (spandrel id), ``zoo_requirements`` (spandrel's size requirements: multiple, minimum, square),
    ``zoo_call`` (spandrel's call function: output selection, extra inputs).
    """

    zoo_arch: str
    zoo_call: Callable[[Any, torch.Tensor], torch.Tensor]
    zoo_requirements: Any

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h, w = x.shape[-2:]
        y = self.zoo_call(_PlainForward(self), pad_to(x, *self.zoo_requirements.get_padding(w, h)))
        return y[..., :h, :w]

    def plain_forward(self, *args: Any) -> Any:
        """The architecture's own ``forward`` (what the authors' code computes on already padded input)."""
        return super().forward(*args)


def pad_to(x: torch.Tensor, pad_w: int, pad_h: int) -> torch.Tensor:
    """Pad ``x`` (``B×C×H×W``) by ``pad_h`` rows at the bottom and ``pad_w`` columns at the right: by reflection
    (Restormer's and MPRNet's test scripts), and by replication beyond what reflection allows (size − 1; the
    authors' scripts would fail there), as spandrel does."""
    if not (pad_w or pad_h):
        return x
    h, w = x.shape[-2:]
    rw, rh = min(pad_w, w - 1), min(pad_h, h - 1)
    x = nn.functional.pad(x, (0, rw, 0, rh), mode="reflect")
    if pad_w > rw or pad_h > rh:
        x = nn.functional.pad(x, (0, pad_w - rw, 0, pad_h - rh), mode="replicate")
    return x


class _PlainForward:
    """Stands for the model inside spandrel's call functions (which call ``model(x)``): calls the architecture's
    own forward, and reads every attribute from the model."""

    def __init__(self, model: ZooProtocol) -> None:
        self._model = model

    def __call__(self, *args: Any) -> Any:
        return self._model.plain_forward(*args)

    def forward(self, *args: Any) -> Any:
        """The architecture's forward too (IPT's call function calls ``model.forward``; reading it from the model
        would be the protocol forward again, an endless recursion)."""
        return self._model.plain_forward(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@functools.cache
def _protocol_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` with :class:`ZooProtocol` in front (one class per architecture class)."""
    return type(cls.__name__, (ZooProtocol, cls), {"__module__": __name__, "__qualname__": f"zoo.{cls.__name__}"})


def adopt(descriptor: Any) -> nn.Module:
    """Turn a spandrel descriptor's model into a zoo derainer (same object, same weights, protocol forward); records
    ``derain_name = "zoo"`` and the ``derain_config`` that rebuilds it (arch, module class, hyperparameters)."""
    model = descriptor.model
    arch = descriptor.architecture.id
    cls = type(model)
    model.__class__ = _protocol_class(cls)
    model.zoo_arch = arch
    model.zoo_requirements = descriptor.size_requirements
    model.zoo_call = descriptor._call_fn  # spandrel keeps the call function private; it is the output protocol
    model.size_multiple = max(1, int(descriptor.size_requirements.multiple_of))  # tiles start on this grid
    hyper = getattr(model, "hyperparameters", None)
    hyper = to_jsonable(hyper) if isinstance(hyper, dict) else None  # tuples -> lists: constructors take both
    try:
        json.dumps(hyper)
    except TypeError:  # e.g. a layer class as an option: our folders then rebuild it from its weights alone
        hyper = None
    model.derain_name = "zoo"
    model.derain_config = {"arch": arch, "module": cls.__name__, "hyperparameters": hyper}
    model.zoo_facts = facts(arch)
    for key, value in POLICY.get(arch, {}).items():
        setattr(model, key, value)
    return model


def licence_notice(model: nn.Module, where: str) -> None:
    """Warn (:class:`LicenceNotice`) when ``model`` is a zoo derainer whose original code is non-commercial."""
    info = getattr(model, "zoo_facts", None)
    if info is not None and info.non_commercial:
        warnings.warn(f"{where}: {model.zoo_arch}'s original code is under the {info.licence}: research and "
                      "non-commercial use only", LicenceNotice, stacklevel=3)


MAX_HYPERPARAMETER = 4096  # bound on every number in zoo hyperparameters (widths, depths, factors)
MAX_PARAMETERS = 500_000_000  # bound on a zoo model built from hyperparameters (2 GB in float32; released: <= 115 M)


def check_zoo_options(arch: str | None = None, hyperparameters: Any = None, module: str | None = None) -> None:
    """Check the zoo derainer's options before anything is built (a config's or a checkpoint's model.json): ``arch``
    given and known, ``hyperparameters`` a mapping of the class's keywords whose numbers are finite and at most
    :data:`MAX_HYPERPARAMETER`, the architecture's own rules (:data:`_RULES`), and the model they describe at most
    :data:`MAX_PARAMETERS` parameters (counted on the meta device: no memory). ZooError naming the key."""
    if arch is None:
        raise ZooError("the zoo derainer needs the option 'arch' (spandrel's architecture id, e.g. Restormer; known "
                       f"here: {', '.join(zoo_architectures())}); or give the weights file itself as the model "
                       "(--model FILE, bench model: FILE, model.init: FILE): its architecture is detected")
    cls = _module_class(arch, module)
    if hyperparameters is None:
        return
    where = f"zoo architecture {arch}: hyperparameter"
    if not isinstance(hyperparameters, Mapping):
        raise ZooError(f"zoo architecture {arch}: hyperparameters must be a mapping of {cls.__name__}'s keywords, "
                       f"got {hyperparameters!r}")
    for key, value in hyperparameters.items():
        for number in _numbers(value):
            if not math.isfinite(number) or abs(number) > MAX_HYPERPARAMETER:
                raise ZooError(f"{where} {key!r} = {_short(value)} is above {MAX_HYPERPARAMETER} (the bound on "
                               "zoo hyperparameters) or not finite")
    rule = _RULES.get(arch)
    if rule is not None:
        rule(dict(hyperparameters), where)
    _heads_positive(dict(hyperparameters), where)
    count = _parameter_count(cls, dict(hyperparameters), arch)
    if count is not None and count > MAX_PARAMETERS:
        raise ZooError(f"zoo architecture {arch} with {_short(dict(hyperparameters))} would have {count / 1e6:.0f} "
                       f"million parameters, above the limit of {MAX_PARAMETERS // 1_000_000} million: check the "
                       "hyperparameters (widths such as dim grow it quadratically)")


def _numbers(value: Any) -> list[float]:
    """The numbers in a hyperparameter value (a number, or a list/tuple of them, nested); bools are not numbers."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)] if not isinstance(value, int) or abs(value) < 2**1000 else [math.inf]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    return []


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _restormer_rule(hyper: dict[str, Any], where: str) -> None:
    """Restormer's attention splits a level's channels (dim·2^level, the decoder's first level dim·2) into heads[level]
    heads, and its downsampling halves then unshuffles channels (so dim must be even); four levels."""
    dim, heads = hyper.get("dim", 48), hyper.get("heads", [1, 2, 4, 8])
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2 or dim % 2:
        raise ZooError(f"{where} 'dim' = {dim!r} must be even and at least 2 (Restormer halves it before each "
                       "downsampling)")
    if not isinstance(heads, (list, tuple)) or len(heads) != 4:
        raise ZooError(f"{where} 'heads' = {heads!r} must be a list of 4 head counts (one per level)")
    for level, h in enumerate(heads):
        if not isinstance(h, int) or isinstance(h, bool) or h < 1:
            raise ZooError(f"{where} heads[{level}] = {h!r} must be a positive integer (attention heads)")
        for channels in {dim * 2**level, *((dim * 2,) if level == 0 else ())}:
            if channels % h:
                raise ZooError(f"{where}s dim = {dim} and heads[{level}] = {h} do not fit: level {level + 1} has "
                               f"{channels} channels, which {h} heads cannot split evenly (choose heads that divide "
                               "dim·2^level, and dim·2 for heads[0])")


def _heads_positive(hyper: dict[str, Any], where: str) -> None:
    """Every ``*heads*`` hyperparameter is a positive integer or a list of them (attention heads)."""
    for key, value in hyper.items():
        if "head" in key and not isinstance(value, bool):
            for n in _numbers(value):
                if n < 1 or n != int(n):
                    raise ZooError(f"{where} {key!r} = {_short(value)} must hold positive integers (attention heads)")


_RULES: dict[str, Callable[[dict[str, Any], str], None]] = {"Restormer": _restormer_rule}


def _parameter_count(cls: type[nn.Module], hyper: dict[str, Any], arch: str) -> int | None:
    """Parameters of ``cls(**hyper)``, built on the meta device (no memory, no time); None when the class cannot be
    built there (then the real build checks the hyperparameters)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = cls(**hyper)
    except TypeError as exc:
        raise ZooError(f"zoo architecture {arch}: bad hyperparameters ({exc})") from None
    except Exception:  # e.g. .item() on a meta tensor inside the constructor
        return None
    return sum(p.numel() for p in net.parameters())


def _module_class(arch: str, module: str | None) -> type[nn.Module]:
    classes = arch_classes(arch)
    cls = next((c for c in classes if c.__name__ == module), None) if module else classes[0]
    if cls is None:
        raise ZooError(f"zoo architecture {arch}: no module class {module!r} (spandrel builds "
                       f"{', '.join(c.__name__ for c in classes)})")
    return cls


@register_model("zoo")
def zoo(arch: str | None = None, hyperparameters: dict[str, Any] | None = None, module: str | None = None) -> nn.Module:
    """A zoo architecture (spandrel id ``arch``, e.g. ``Restormer``) built from its constructor's ``hyperparameters``
    (None: the class defaults, which are the released configuration for most), with random weights and the
    architecture's test protocol. ``module``: the class name, for architectures spandrel builds from several. The
    options are checked first (:func:`check_zoo_options`: bounds, the architecture's rules, the parameter count)."""
    check_zoo_options(arch, hyperparameters, module)
    assert arch is not None
    cls = _module_class(arch, module)
    try:
        net = cls(**(hyperparameters or {}))
    except TypeError as exc:
        raise ZooError(f"zoo architecture {arch}: bad hyperparameters ({exc})") from exc
    return adopt(describe_from_state(net.state_dict(), f"zoo architecture {arch} with {hyperparameters or 'defaults'}",
                                     arch=arch))


zoo.check_options = check_zoo_options  # type: ignore[attr-defined]  # registry.check_options calls it


def from_state_dict(state: Mapping[str, torch.Tensor], where: str) -> nn.Module:
    """The zoo derainer a foreign state dict holds (detected by spandrel), in eval mode on the CPU."""
    return adopt(describe_from_state(state, where)).eval()
