"""Where code runs: device choice, mixed precision, and torchrun/DistributedDataParallel plumbing.

Shared by training, inference, joint fine-tuning and the benchmark so each decides these things one way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


def resolve_device(device: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` -> the (local-rank) CUDA device when available, else CPU; ``cuda`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but no CUDA GPU is available; use device=cpu")
        if device == "cuda" and local_rank is not None:
            device = f"cuda:{local_rank}"
    return torch.device(device)


CPU_PIXELS_PER_CALL = 1 << 16  # mspfn-lite, 2 cores: 96×128 images fastest 4 per call, 160×160 2, 192×192 1
COMPILE_ENV = "DERAINBENCH_COMPILE"  # "0" or "1": overrides the default of every policy (an explicit flag wins)


@dataclass(frozen=True)
class InferencePolicy:
    """How derainers run inference on a device (every product path asks :func:`inference_policy`)."""

    channels_last: bool  # NHWC memory format for the model and its inputs
    amp: bool  # bf16/fp16 autocast (CUDA only)
    batch_size: int | None  # images (of one size) or tiles per model call; None: by image size (see batch)
    compile: bool = False  # torch.compile the model's forward (eager fallback when compilation fails)

    def batch(self, height: int, width: int) -> int:
        """Images of ``height × width`` per call: ``batch_size``, or as many as fit ``CPU_PIXELS_PER_CALL`` (1-8)."""
        return self.batch_size or max(1, min(8, CPU_PIXELS_PER_CALL // max(1, height * width)))


def inference_policy(device: torch.device, *, model: torch.nn.Module | None = None, channels_last: bool | None = None,
                     amp: bool | None = None, batch_size: int | None = None,
                     compile: bool | None = None) -> InferencePolicy:
    """The measured defaults for ``device`` (and ``model``), each overridable (None = default).

    CPU: channels_last (2 cores: MSPFN 1.7x, mspfn-lite 1.2-1.5x, PReNet 1.05x, YOLO11n/U-Net 1.8-3x faster;
    bench/RESULTS.md) unless the model sets ``channels_last_on_cpu = False`` (the zoo's Restormer: see
    :data:`derain.zoo.POLICY`; a model with ``channels_last_ok = False``, the zoo's IPT, refuses channels_last),
    no autocast, small images batched up to 64 k pixels per call (measured faster),
    large ones one per call (batching measured slower for mspfn-lite at 192 px), ``torch.compile`` for models whose
    class sets ``compile_on_cpu`` (MSPFN at the paper's width: 1.5x for mspfn-m17n1 at 480×320; not mspfn-lite,
    1.07-1.16x, nor PReNet, 0.96x).
    The environment variable ``DERAINBENCH_COMPILE=0|1`` changes that default.
    CUDA: bf16 autocast for models whose class sets ``bf16_inference`` (PReNet, MSPFN: PSNR on the 100 real
    Rain100L pairs within 0.01 dB of fp32, bench/amp_psnr.py) on GPUs with bf16; NCHW, 8 per call and no compile
    until layout, batch and compile are measured on a GPU (none was lent so far); flags switch each.
    """
    cpu = device.type == "cpu"
    if compile is None:
        env = os.environ.get(COMPILE_ENV, "").strip()
        if env not in ("", "0", "1"):
            raise ValueError(f"{COMPILE_ENV} must be 0 or 1, got {env!r}")
        compile = env == "1" if env else cpu and bool(getattr(model, "compile_on_cpu", False))
    if channels_last and not getattr(model, "channels_last_ok", True):
        raise ValueError(f"{getattr(model, 'zoo_arch', type(model).__name__)} does not run in the channels_last "
                         "(NHWC) memory format (its test protocol reshapes with .view): leave --channels-last off")
    return InferencePolicy(
        channels_last=(cpu and bool(getattr(model, "channels_last_on_cpu", True))) if channels_last is None
        else channels_last,
        amp=(not cpu and bool(getattr(model, "bf16_inference", False)) and _has_bf16(device)) if amp is None else amp,
        batch_size=(None if cpu else 8) if batch_size is None else batch_size,
        compile=compile,
    )


def _has_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA GPU here with bf16 support (False without one: nothing to ask)."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


_COMPILED_ATTR = "_derainbench_compiled"  # the compiled module, kept on the model (see model_forward)
_NOT_COMPILABLE: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def model_forward(model: torch.nn.Module, compile: bool, backend: str | Callable = "inductor") -> Callable:
    """``model``'s forward, or its ``torch.compile``d version when ``compile`` (made once per model and reused).

    Compiled kernels are cached on disk by PyTorch, so only the first process pays the full compile time (for
    mspfn-m17n1 on 2 CPU cores: about 75 s, later about 13 s). A new input shape recompiles once, after which
    shapes are dynamic. When compiling fails (no C++ compiler, an unsupported Python), this warns once and runs
    the plain model: compilation changes speed, never results (outputs agree to float rounding, tested).
    """
    if not compile or model in _NOT_COMPILABLE:
        return model
    _quiet_cuda_home_notice()
    compiled = model.__dict__.get(_COMPILED_ATTR)
    if compiled is None:
        try:
            compiled = torch.compile(model, backend=backend)
        except Exception as exc:  # e.g. "Dynamo is not supported on this Python"
            return _compile_failed(model, exc)
        # A plain attribute, not a submodule (so not in state_dict or modules()), freed together with the model.
        object.__setattr__(model, _COMPILED_ATTR, compiled)

    def forward(x: torch.Tensor) -> torch.Tensor:
        from torch._dynamo.exc import TorchDynamoException

        if model in _NOT_COMPILABLE:
            return model(x)
        try:
            return compiled(x)
        except TorchDynamoException as exc:  # compilation, not the model, failed: run it plainly
            return _compile_failed(model, exc)(x)

    return forward


class _DropCudaHomeNotice(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." notice: compiling for the CPU on a machine
    without a GPU is this tool's normal case, not something to warn a user about."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No CUDA runtime is found" not in record.getMessage()


def _quiet_cuda_home_notice() -> None:
    log = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _DropCudaHomeNotice) for f in log.filters):
        log.addFilter(_DropCudaHomeNotice())


def _compile_failed(model: torch.nn.Module, exc: BaseException) -> torch.nn.Module:
    _NOT_COMPILABLE.add(model)
    model.__dict__.pop(_COMPILED_ATTR, None)
    root = exc
    while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
        root = inner  # dynamo wraps the backend's error (BackendCompilerFailed.inner_exception): report that
    first_line = f"{type(root).__name__}: " + (str(root).strip().splitlines() or [""])[0][:300]
    warnings.warn(f"torch.compile failed for {type(model).__name__}; running it uncompiled (same results, slower; "
                  f"--no-compile or {COMPILE_ENV}=0 skips the attempt): {first_line}", RuntimeWarning, stacklevel=3)
    return model


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, fp16 on older ones, None (full precision) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed-precision context on CUDA (bf16 where supported); a no-op on CPU or when disabled."""
    dtype = autocast_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun launch (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_hint: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA); else no-op."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = device_hint != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (no-op when not distributed)."""
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (returned detached; the input itself when not distributed)."""
    if not info.enabled:
        return value.detach()
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / info.world_size


def all_reduce_grads(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Average the gradients of ``params`` over ranks in place (for modules trained outside DDP's wrapper)."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is None:  # every rank must join each all-reduce, so an unused parameter contributes zeros
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(info.world_size)


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (so all ranks stop together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group at the end of a torchrun launch. On a normal exit the ranks first meet at a barrier:
    a rank tearing gloo down while another is still finishing its last collective aborted it now and then
    ("terminate called without an active exception"). While an exception propagates there is no barrier (the
    other ranks may be gone)."""
    if info.enabled and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def validation_copy(model: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, torch.memory_format]:
    """The model a validation pass should run and the memory format of its inputs: where the inference policy
    runs NHWC (CPU), a ``channels_last`` copy, so the trained model keeps its own layout (measured on 2 cores:
    mspfn-lite at 160 px 156 -> 101 ms per image); else ``model`` itself (NCHW). Same results to float rounding."""
    if not inference_policy(device, model=model).channels_last:
        return model, torch.contiguous_format
    import copy

    return copy.deepcopy(model).to(memory_format=torch.channels_last), torch.channels_last


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Temporarily put ``model`` in eval mode, restoring its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
