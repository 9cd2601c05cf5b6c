"""Checkpoints: our format (a folder with ``model.safetensors`` + ``model.json``) and foreign state dicts.

A checkpoint folder holds everything needed to rebuild the model: the registered name, its config
overrides and the training step. Foreign ``.pth``/``.pt`` files (e.g. the official PReNet releases) load with
``torch.load(weights_only=True)``; a ``module.`` prefix from DataParallel is tolerated.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from derain.fileio import atomic_path, atomic_write_text, read_json
from derain.registry import build_model, list_models

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unsafe, or does not fit the architecture; the message says which."""


def save_checkpoint(
    folder: str | Path, model: nn.Module, *, name: str, config: Mapping[str, Any] | None = None,
    step: int = 0, extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/model.json`` atomically (temp file + rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(unwrap(model).state_dict(), folder / WEIGHTS_FILE)
    meta = {"name": name, "config": dict(config or {}), "step": int(step), **dict(extra or {}),
            "weights_sha256": file_sha256(folder / WEIGHTS_FILE)}  # checked on load: both files of one save
    revision = getattr(unwrap(model), "arch_revision", None)
    if revision is not None:  # which wiring of the architecture the weights belong to (see check_revision)
        meta["arch_revision"] = int(revision)
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2, sort_keys=True))
    return folder


def update_hash(h: Any, path: str | Path) -> Any:
    """Feed a file's bytes into the hash object ``h`` in 1 MiB chunks; returns ``h``."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return update_hash(hashlib.sha256(), path).hexdigest()


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write tensors as safetensors atomically (:func:`derain.fileio.atomic_path`); moved to CPU, contiguous. A
    tensor shared by several keys (MPRNet reuses one PReLU) is written under each of them (safetensors refuses
    shared storage; loading sets the one parameter to the same value from each key)."""
    seen: set[int] = set()
    tensors = {}
    for k, v in state.items():
        v = v.detach().contiguous().cpu()
        if v.numel() and v.untyped_storage().data_ptr() in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        tensors[k] = v
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


@contextmanager
def replace_dir(folder: str | Path) -> Iterator[Path]:
    """Write a whole folder at once: yields a temp folder beside ``folder``; when the block finishes it takes
    ``folder``'s place (the old one is kept as ``.<name>.old`` until the new one is in place), so a crash leaves
    either the old folder or the new one, never a mix of both. :func:`recover_dir` undoes a crash between the
    two renames."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        folder.replace(old)
    tmp.replace(folder)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(folder: str | Path) -> bool:
    """After a crash inside :func:`replace_dir`'s swap: put ``.<name>.old`` back when ``folder`` is missing.
    Returns True when it did."""
    folder = Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and old.is_dir():
        old.replace(folder)
        return True
    return False


class FolderLockedError(RuntimeError):
    """Another process is writing the same run folder."""


@contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` for the block. A second process on the same folder fails at once
    with a line naming the holder, instead of both computing the same work and overwriting each other's files. The
    operating system releases the lock when the process ends, so a killed run never leaves a stale lock behind.
    (Platforms without ``fcntl`` run unlocked.)"""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    import time

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".lock", "a+")  # noqa: SIM115 (held open for the whole block)
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise FolderLockedError(f"{folder} is in use by {holder}: wait for it to finish, or write to another "
                                    "folder (out=... / name=...)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} ({command}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the lock


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def is_checkpoint(path: str | Path) -> bool:
    """True for one of our checkpoint folders (or a path to its model.json / model.safetensors)."""
    folder = _checkpoint_folder(Path(path))
    return folder is not None


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a checkpoint folder."""
    folder = _checkpoint_folder(Path(path))
    if folder is None:
        raise CheckpointError(f"not a derainbench checkpoint (no {META_FILE} + {WEIGHTS_FILE}): {path}")
    try:
        meta = read_json(folder / META_FILE)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise CheckpointError(f"{folder / META_FILE}: must be a JSON object with the architecture's \"name\" "
                              "(and its \"config\"), as derainbench writes it")
    if not isinstance(meta.get("config", {}), dict):
        raise CheckpointError(f"{folder / META_FILE}: \"config\" must be an object of model options")
    return meta


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load weights from a checkpoint folder, a ``.safetensors`` file or a ``.pth``/``.pt`` state dict.

    ``.pth`` files are read with ``weights_only=True``; a dict wrapping the weights is unwrapped as spandrel does
    (:func:`unwrap_state_dict`: ``model_state_dict``, ``state_dict``, ``params_ema``, ``params``, ``model``, ``net``
    or a single key; ``module.``/``netG.`` prefixes stripped).
    """
    path = Path(path)
    folder = _checkpoint_folder(path)
    if folder is not None:
        path = folder / WEIGHTS_FILE
        expected = read_meta(folder).get("weights_sha256")  # checkpoints saved before it existed have none
        if expected is not None and file_sha256(path) != expected:
            raise CheckpointError(
                f"{path} is not the file {folder / META_FILE} was saved with (sha256 differs): it is damaged or "
                "truncated, or the checkpoint's parts come from different saves (an interrupted copy, a hand-made "
                "mix). Use another checkpoint of the run (best/ or last/) or restore this folder from a copy")
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path} (supply a local .safetensors/.pth file)")
    if path.suffix == ".safetensors":
        try:
            state: Any = load_file(str(path))
        except Exception as exc:  # SafetensorError, or OSError for a truncated header
            raise CheckpointError(f"{path}: not a readable .safetensors file ({exc}); it is truncated or damaged: "
                                  "restore it or re-save the weights") from exc
    else:
        state = safe_torch_load(path)
    return unwrap_state_dict(state, path)


# Keys a published file wraps its weights under, in spandrel's order (spandrel.canonicalize_state_dict): the zoo
# follows spandrel, so a file holding both params and params_ema gives the EMA weights, as spandrel reads it.
WRAPPER_KEYS = ("model_state_dict", "state_dict", "params_ema", "params-ema", "params", "model", "net")
PREFIXES = ("module.", "netG.")  # DataParallel's, and BasicSR's generator prefix (removed when every key has it)


def unwrap_state_dict(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside what a weights file holds (see :data:`WRAPPER_KEYS`); when the file holds weights under
    more than one of those keys, a warning names the one read. Errors name the file and, for a dict that holds no
    tensors, its top-level keys."""
    state = obj
    if isinstance(state, dict):
        wrapped = [k for k in WRAPPER_KEYS if isinstance(state.get(k), dict) and state[k]]
        key = next((k for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if key is None and len(state) == 1 and isinstance(next(iter(state.values())), dict):
            key = next(iter(state))
        if len(wrapped) > 1:
            others = ", ".join(repr(k) for k in wrapped if k != key)
            warnings.warn(f"{path}: read the weights under {key!r} (the file also holds {others}; spandrel's order, "
                          f"which the zoo follows: {', '.join(WRAPPER_KEYS)})", stacklevel=3)
        if key is not None:
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = (f": its top-level keys are {', '.join(repr(k) for k in list(obj)[:12])}"
                f"{' ...' if len(obj) > 12 else ''} (the weights go under one of {', '.join(WRAPPER_KEYS)}, or at the "
                "top level)") if isinstance(obj, dict) and obj else f" (it holds a {type(obj).__name__})"
        raise CheckpointError(f"{path} does not hold a state dict of tensors{keys}")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return {k.removeprefix("module."): v for k, v in state.items()}


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file it refuses (one that would run code or build other
    objects than tensors, numbers, strings and containers) or cannot read is a one-line :class:`CheckpointError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise CheckpointError(f"refused {path}: {_unpickling_reason(exc)}; only tensors, numbers, strings and "
                              "containers of them are read (torch.load weights_only=True), nothing in the file "
                              "was run") from None


def _unpickling_reason(exc: Exception) -> str:
    """One line of torch's (long, multi-line) weights-only refusal: the object the file asked to build, if named.
    torch's advice to load with ``weights_only=False`` (which runs the file's code) is never repeated."""
    text = str(exc)
    if "TorchScript" in text:
        return ("a TorchScript archive (a program, not a state dict): export its weights with "
                "torch.save(model.state_dict(), ...) where you trust the file, then pass that file")
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only` set to `False" not in line
             and "weights_only=False" not in line]
    named = [line for line in lines if "GLOBAL" in line or "global" in line.split(" ", 3)[:3]]
    reason = (named or lines or [type(exc).__name__])[0]
    if "Weights only load failed" in reason and len(lines) > 1:
        reason = next((line for line in lines[1:] if "weights_only" not in line), lines[1])
    return reason.rstrip(".")[:300]


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load weights from ``path`` into ``model``; a mismatch names the missing and unexpected keys."""
    state = read_state_dict(path)
    target = unwrap(model)
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if strict and (missing or unexpected or bad_shape):
        name = getattr(target, "derain_name", type(target).__name__)
        parts = [f"weights {path} do not fit the architecture {name!r}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
        if bad_shape:
            shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shape[:5]]
            parts.append(f"shape mismatches ({len(bad_shape)}): {'; '.join(shapes)}")
        if is_checkpoint(path):  # say what the checkpoint holds, so the fix is one override away
            meta = read_meta(path)
            opts = json.dumps(meta.get("config") or {}).replace('"', "")
            parts.append(f"(the checkpoint holds {meta.get('name')!r} with options {opts}: pass the folder itself "
                         f"as the model, or in a config set model.name={meta.get('name')} 'model.options={opts}')")
        raise CheckpointError(" ".join(parts))
    target.load_state_dict(state, strict=strict)
    return model


def load_derainer(model: str | Path, weights: str | Path | None = None, **overrides: Any) -> nn.Module:
    """A derainer from a registered name, one of our checkpoint folders, or a weights file as its authors publish it.

    ``model`` is looked up in this order (the rule for a file that could be read more than one way):

    1. a registered name such as ``"prenet"`` (random init unless ``weights`` is given);
    2. a checkpoint folder written by :func:`save_checkpoint`, whose ``model.json`` says which architecture to build;
    3. a weights file (``.pth``/``.pt``/``.safetensors``, bare or wrapped in ``params``/``params_ema``/``state_dict``,
       with or without ``module.``), read only with ``weights_only=True``: a built-in derainer whose default
       configuration has exactly the file's keys and shapes (the authors' PReNet release), else the architecture
       spandrel detects in it (:mod:`derain.zoo`: Restormer, MPRNet, NAFNet, ...; a non-commercial one warns).

    Returned in eval mode on the CPU; its ``derain_weights`` names the file its weights came from (absent: the
    random initial weights of a registered name).
    """
    model_str = str(model)
    if model_str not in list_models() and is_checkpoint(model_str):
        meta = read_meta(model_str)
        if meta["name"] == "zoo" and weights is None:  # rebuilt from its weights, as spandrel detects them
            net = _zoo_from_file(model_str, expect=meta.get("config", {}).get("arch"))
        else:
            net = build_model(meta["name"], **{**meta.get("config", {}), **overrides})
            load_weights(net, weights or model_str)
        if weights is None:
            check_revision(net, meta, model_str)
        net.derain_checkpoint = meta  # type: ignore[attr-defined]
        net.derain_weights = str(weights or model_str)  # type: ignore[attr-defined]
    elif model_str in list_models():
        net = build_model(model_str, **overrides)
        if weights is not None:
            load_weights(net, weights)
            net.derain_weights = str(weights)  # type: ignore[attr-defined]
    elif Path(model_str).is_file():
        if weights is not None:
            raise CheckpointError(f"--weights goes with a registered name; {model_str} is itself a weights file "
                                  "(pass it alone)")
        net = derainer_from_file(model_str, **overrides)
        net.derain_weights = model_str  # type: ignore[attr-defined]
    else:
        p = Path(model_str)
        hint = " (the folder has no model.json + model.safetensors)" if p.is_dir() else ""
        raise CheckpointError(
            f"{model_str!r} is neither a registered derainer ({', '.join(list_models())}), a checkpoint folder nor a "
            f"weights file{hint}"
        )
    return net.eval()


def derainer_from_file(path: str | Path, **overrides: Any) -> nn.Module:
    """The derainer a foreign weights file holds: a built-in whose default configuration fits the file's keys and
    shapes exactly, else the zoo architecture spandrel detects (rule 3 of :func:`load_derainer`)."""
    state = read_state_dict(path)
    if not state:  # it would 'fit exactly' a parameterless built-in (identity) and be benched as a derainer
        raise CheckpointError(f"{path} holds no weights (an empty state dict): it is not a model; re-save the weights "
                              "or pick another file")
    for name in list_models():
        if name == "zoo" or not _fits_exactly(name, state):
            continue
        net = build_model(name, **overrides)
        net.load_state_dict(state)
        return net
    if overrides:
        raise CheckpointError(f"{path}: options {sorted(overrides)} apply to built-in derainers; a zoo file's "
                              "weights define its architecture")
    return _zoo_from_file(path, state=state)


def _fits_exactly(name: str, state: Mapping[str, torch.Tensor]) -> bool:
    """Whether the built-in ``name`` at its default configuration has exactly ``state``'s keys and shapes (built on
    the meta device: no memory, no time)."""
    try:
        with torch.device("meta"):
            own = build_model(name).state_dict()
    except Exception:  # a model that needs options cannot be matched by default
        return False
    return own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own)


def _zoo_from_file(path: str | Path, state: Mapping[str, torch.Tensor] | None = None,
                   expect: str | None = None) -> nn.Module:
    """A zoo derainer from a weights file or one of our zoo checkpoint folders (:mod:`derain.zoo`)."""
    from derain import zoo

    try:
        net = zoo.from_state_dict(read_state_dict(path) if state is None else state, str(path))
    except zoo.ZooError as exc:
        raise CheckpointError(str(exc)) from None
    if expect is not None and net.zoo_arch != expect:
        raise CheckpointError(f"{path}: model.json says {expect}, but its weights are a {net.zoo_arch} model")
    zoo.licence_notice(net, str(path))
    return net


def build_derainer(name: str | None, options: Mapping[str, Any] | None = None,
                   init: str | Path | None = None) -> nn.Module:
    """The derainer a training config describes (``model.name``/``options``/``init``), in train mode on the CPU.

    ``name`` None: the architecture ``init`` holds (a checkpoint folder's, a built-in's, or a zoo file's: a Restormer
    release fine-tuned with ``init`` alone), else ``mspfn``. A name with ``init``: that architecture, ``init``'s
    weights loaded into it (they must fit). ``zoo`` with ``init``: the file's zoo model (its ``arch`` option, if
    given, must match).
    """
    options = dict(options or {})
    if init is not None and (name is None or name == "zoo"):
        net = load_derainer(init)
        if name is None and options:  # the same architecture with other options (e.g. a built-in's units)
            net = build_model(net.derain_name, **{**getattr(net, "derain_config", {}), **options})
            load_weights(net, init)
        if name == "zoo" and options.get("arch") not in (None, getattr(net, "zoo_arch", None)):
            raise CheckpointError(f"model.init {init} holds a {getattr(net, 'zoo_arch', net.derain_name)} model, "
                                  f"not model.options.arch={options['arch']}")
        return net.train()
    net = build_model(name or "mspfn", **options)
    if init is not None:
        load_weights(net, init)
    return net.train()


def check_revision(model: nn.Module, meta: Mapping[str, Any], where: str | Path) -> None:
    """Warn when a checkpoint was saved for an older wiring of ``model``'s architecture (``arch_revision``)."""
    current = getattr(unwrap(model), "arch_revision", None)
    saved = int(meta.get("arch_revision", 1))
    if current is not None and saved < current:
        note = getattr(unwrap(model), "arch_revision_note", "the architecture changed since")
        warnings.warn(f"{where}: checkpoint of {meta.get('name')} architecture revision {saved}, this is revision "
                      f"{current}: {note}", stacklevel=3)


def _checkpoint_folder(path: Path) -> Path | None:
    folder = path.parent if path.name in (WEIGHTS_FILE, META_FILE) else path
    if (folder / META_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        return folder
    return None


def _preview(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (" ..." if len(keys) > n else "")
