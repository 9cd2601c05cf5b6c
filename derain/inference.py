"""Inference: run a derainer on tensors (optionally tiled, for large images) or on image files.

Tiled inference keeps memory on the model's device bounded by the tile size: the model only ever sees
``tile × tile`` crops, and the image-sized output/weight accumulators live on the input tensor's device
(e.g. a CPU image with a CUDA model). Neighbouring tiles share ``overlap`` pixels and are blended with smooth
weights (see :func:`blend_window`), never a flat average, so there are no seams.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from tqdm import tqdm

from derain.imageio import is_image_file, list_images, read_tensor, write_image
from derain.runtime import InferencePolicy, autocast, inference_policy, model_forward, resolve_device

__all__ = ["NonFiniteOutputError", "derain_paths", "derain_tensor", "resolve_device", "blend_weights", "blend_window",
           "tile_starts"]

DEFAULT_OVERLAP = 64  # PReNet stays within 1-2 of 255 levels of untiled output; models may set ``tile_overlap``
DEFAULT_BATCH_SIZE = 4
DEFAULT_STAT_PASSES = 1  # tiled passes that gather MSPFN's channel-attention statistics from the tiles

T = TypeVar("T")


def model_device(model: nn.Module, default: torch.device | None = None) -> torch.device:
    """The device of the model's first parameter or buffer (``default``, else CPU, for parameter-free models)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return default or torch.device("cpu")


def tile_overlap(model: nn.Module, overlap: int | None = None) -> int:
    """``overlap``, or the model's own default (its ``tile_overlap`` attribute; MSPFN: 128), or 64."""
    return int(getattr(model, "tile_overlap", DEFAULT_OVERLAP)) if overlap is None else overlap


def derain_tensor(
    model: nn.Module, x: torch.Tensor, tile: int | None = None, overlap: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE, *, amp: bool | None = None, channels_last: bool | None = None,
    compile: bool | None = None, stat_passes: int = DEFAULT_STAT_PASSES,
) -> torch.Tensor:
    """Derain ``x`` (``B×3×H×W``, float in [0, 1]) -> ``B×3×H×W`` float32 in [0, 1] on ``x``'s device.

    Runs under ``torch.inference_mode()`` on the model's device (call ``model.eval()`` first; checkpoints from
    :func:`derain.checkpoint.load_derainer` already are). ``tile``: process ``tile × tile`` crops that share
    ``overlap`` pixels with their neighbours (None: the model's default, :func:`tile_overlap`); ``tile=None``: the
    whole image at once. ``batch_size`` crops (or whole images) go through the model per call. ``amp``: bf16/fp16
    autocast on CUDA (ignored on CPU).
    ``channels_last``: NHWC memory format (converts the model's parameters in place). ``compile``: run the
    ``torch.compile``d model (:func:`derain.runtime.model_forward`; same results to float rounding). ``amp``,
    ``channels_last`` and ``compile`` left at None follow :func:`derain.runtime.inference_policy` for the model and
    its device, the measured defaults the CLI and the bench use.
    ``stat_passes``: for models whose output depends on whole-image statistics (MSPFN's channel attention), the
    tiled passes that gather those statistics from the tiles before the output pass (0: a downscaled copy's).
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a B×3×H×W tensor, got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model, x.device)
    policy = inference_policy(device, model=model, channels_last=channels_last, amp=amp, compile=compile)
    amp, channels_last, compile = policy.amp, policy.channels_last, policy.compile
    if channels_last:
        model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        if tile is None or (x.shape[-2] <= tile and x.shape[-1] <= tile):
            chunks = [_run(model, c, device, amp, channels_last, compile).to(x.device) for c in x.split(batch_size)]
            out = torch.cat(chunks)
        else:
            out = _derain_tiled(model, x, tile, tile_overlap(model, overlap), batch_size, device, amp, channels_last,
                                compile, stat_passes)
        bad = ~torch.isfinite(out)
        if bool(bad.any()):  # clamping keeps NaN, and an 8-bit write makes it black: never pass it on
            name = getattr(model, "derain_name", type(model).__name__)
            raise NonFiniteOutputError(
                f"derainer {name} returned {int(bad.sum())} non-finite values (NaN/inf) of {out.numel()} for images "
                "in [0, 1]: its weights are broken (check the checkpoint: a NaN tensor, a diverged run)")
        return out.clamp_(0.0, 1.0)


class NonFiniteOutputError(RuntimeError):
    """A derainer produced NaN or inf: its output must not be written or scored."""


def _run(model: nn.Module, x: torch.Tensor, device: torch.device, amp: bool, channels_last: bool,
         compile: bool = False) -> torch.Tensor:
    """One model call on ``x`` moved to ``device``; float32 result on ``device``."""
    x = x.to(device, torch.float32, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, enabled=amp):
        y = model_forward(model, compile)(x)
    if y.shape != x.shape:
        raise RuntimeError(f"derainer returned shape {tuple(y.shape)} for input {tuple(x.shape)}")
    return y.float()


def tile_spans(size: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """``(start, end)`` spans of about ``tile`` pixels covering ``size``, neighbours sharing ``>= overlap``.

    Starts are multiples of ``align`` (a model's ``size_multiple``: MSPFN's pyramid and stride-2 convs are
    only shift-equivariant by multiples of 8, so a misaligned tile would see a different sampling grid than
    the whole image). The stride is ``tile - overlap`` rounded down to ``align``; the last span starts at the
    largest aligned offset that still leaves ``tile`` pixels and runs to the end (so it may be up to
    ``align - 1`` pixels longer than ``tile``). ``size <= tile`` gives the single span ``(0, size)``.
    """
    if size <= tile:
        return [(0, size)]
    stride = (tile - overlap) // align * align
    if stride <= 0:
        raise ValueError(f"tile {tile} minus overlap {overlap} leaves no stride at alignment {align}")
    last = (size - tile) // align * align
    starts = list(range(0, last, stride)) + [last]
    return [(s0, s0 + tile) for s0 in starts[:-1]] + [(last, size)]


def owned_spans(spans: Sequence[tuple[int, int]], size: int, align: int = 1) -> list[tuple[int, int]]:
    """The part of the image each of :func:`tile_spans`' spans owns, in the span's own coordinates.

    Neighbours split their overlap in the middle (rounded down to ``align``); the first owns from 0 and the last
    to ``size`` rounded up to ``align`` (the model's padding). The owned parts partition that padded length, so
    sums over them equal sums over the whole image (used for MSPFN's whole-image statistics).
    """
    padded = -(-size // align) * align
    cuts = [0] + [(s1 + e0) // 2 // align * align for (_, e0), (s1, _) in pairwise(spans)] + [padded]
    return [(a - s0, b - s0) for (s0, _), a, b in zip(spans, cuts[:-1], cuts[1:], strict=True)]


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of :func:`tile_spans` (kept for callers that only need the starts)."""
    return [s0 for s0, _ in tile_spans(size, tile, overlap, align)]


def blend_window(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D blending weights (float64, ``length``) of a tile along one axis.

    An edge inside the image (``ramp_start``/``ramp_end``) gets: weight 0 on its outer ``overlap // 4``
    pixels (pure context: the pixels nearest a tile edge are the ones hurt by the zero padding at that edge),
    then a raised-cosine ramp ``sin²(π(i + ½) / 2L)`` over the next ``L = overlap - 2 * (overlap // 4)``
    pixels, then 1. An edge on the image border keeps weight 1 (the model pads there exactly as it would on
    the whole image). Two neighbours overlapping by exactly ``overlap`` get mirror-image ramps over the same
    pixels, summing to 1; other overlaps are normalised by the accumulated weight.
    """
    margin = overlap // 4
    ramp_len = overlap - 2 * margin
    i = torch.arange(ramp_len, dtype=torch.float64)
    ramp = torch.sin(math.pi * (i + 0.5) / (2 * ramp_len)) ** 2
    rise = torch.cat((torch.zeros(margin, dtype=torch.float64), ramp))
    w = torch.ones(length, dtype=torch.float64)
    n = min(len(rise), length)
    if ramp_start:
        w[:n] *= rise[:n]
    if ramp_end:
        w[length - n :] *= rise[:n].flip(0)
    return w


def blend_weights(
    height: int, width: int, overlap: int, edges: tuple[bool, bool, bool, bool]
) -> torch.Tensor:
    """Separable ``height × width`` float32 weights; ``edges`` = (top, bottom, left, right) lie inside the image."""
    top, bottom, left, right = edges
    wy = blend_window(height, overlap, top, bottom)
    wx = blend_window(width, overlap, left, right)
    return (wy[:, None] * wx[None, :]).float()


def _derain_tiled(
    model: nn.Module, x: torch.Tensor, tile: int, overlap: int, batch_size: int,
    device: torch.device, amp: bool, channels_last: bool, compile: bool = False, stat_passes: int = 0,
) -> torch.Tensor:
    """Tiled forward: crops of about ``tile × tile`` in same-shape mini-batches, blended into image-sized buffers.

    A model with whole-image statistics (``tile_context``, MSPFN) runs one image at a time inside that context,
    after ``stat_passes`` tiled passes that gather the statistics from the tiles (``collect_tile_statistics``).
    """
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"tile overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    b, _, height, width = x.shape
    align = int(getattr(model, "size_multiple", 1))
    if stat_passes < 0:
        raise ValueError(f"stat_passes must be >= 0, got {stat_passes}")
    rows, cols = tile_spans(height, tile, overlap, align), tile_spans(width, tile, overlap, align)
    tiles = [(ys, xs) for ys in rows for xs in cols]
    owned = {**{("y", span): o for span, o in zip(rows, owned_spans(rows, height, align), strict=True)},
             **{("x", span): o for span, o in zip(cols, owned_spans(cols, width, align), strict=True)}}
    out = torch.zeros(b, 3, height, width, dtype=torch.float32, device=x.device)
    weight_sum = torch.zeros(height, width, dtype=torch.float32, device=x.device)
    windows: dict[tuple, torch.Tensor] = {}
    for ys, xs in tiles:
        weight_sum[ys[0] : ys[1], xs[0] : xs[1]] += _window(windows, ys, xs, overlap, height, width, x.device)
    if not bool((weight_sum > 0).all()):  # guaranteed by tile_spans/blend_window; a cheap guard
        raise RuntimeError("tiling left pixels with zero blend weight")
    tile_context = getattr(model, "tile_context", None)
    collect = getattr(model, "collect_tile_statistics", None) if tile_context is not None else None
    if tile_context is None:  # tiles of all images mixed freely in mini-batches
        per_image = [[(i, ys, xs) for ys, xs in tiles for i in range(b)]]
    else:  # one image at a time, inside the model's whole-image context (e.g. MSPFN's global pooling)
        per_image = [[(i, ys, xs) for ys, xs in tiles] for i in range(b)]
    for jobs in per_image:
        i0 = jobs[0][0]
        context = (tile_context(x[i0 : i0 + 1].to(device, torch.float32)) if tile_context is not None
                   else contextlib.nullcontext())
        by_shape: dict[tuple[int, int], list] = {}
        for job in jobs:
            by_shape.setdefault((job[1][1] - job[1][0], job[2][1] - job[2][0]), []).append(job)
        with context:
            for _ in range(stat_passes if collect is not None else 0):  # plain (uncompiled): module state changes
                with collect(height, width) as stats:
                    for group, crops in _tile_batches(x, by_shape, batch_size):
                        stats.cores = [(*owned["y", ys], *owned["x", xs]) for _, ys, xs in group]
                        _run(model, crops, device, amp, channels_last)
            for group, crops in _tile_batches(x, by_shape, batch_size):
                pred = _run(model, crops, device, amp, channels_last, compile).to(x.device)
                for k, (i, ys, xs) in enumerate(group):
                    w = _window(windows, ys, xs, overlap, height, width, x.device)
                    out[i, :, ys[0] : ys[1], xs[0] : xs[1]] += pred[k] * w
    return out.div_(weight_sum)


def _tile_batches(x: torch.Tensor, by_shape: dict[tuple[int, int], list], batch_size: int) -> Iterator[tuple]:
    """``(group, crops)``: jobs ``(image, rows, cols)`` of one tile shape, ``batch_size`` at a time, with their
    crops of ``x`` stacked (``B×3×h×w``); made as consumed, so only one batch of crops exists at a time."""
    for same_shape in by_shape.values():
        for group in _chunks(same_shape, batch_size):
            yield group, torch.stack([x[i, :, ys[0] : ys[1], xs[0] : xs[1]] for i, ys, xs in group])


def _window(
    cache: dict[tuple, torch.Tensor], ys: tuple[int, int], xs: tuple[int, int], overlap: int,
    height: int, width: int, device: torch.device,
) -> torch.Tensor:
    """Blend weights of the tile spanning rows ``ys`` and columns ``xs``, cached by size and inner edges."""
    edges = (ys[0] > 0, ys[1] < height, xs[0] > 0, xs[1] < width)
    key = (ys[1] - ys[0], xs[1] - xs[0], edges)
    if key not in cache:
        cache[key] = blend_weights(key[0], key[1], overlap, edges).to(device)
    return cache[key]


def _chunks(items: Sequence[T], n: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of length ``n`` (the last may be shorter)."""
    for i in range(0, len(items), n):
        yield items[i : i + n]


def collect_inputs(inputs: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(image files, folders they were given as) for a file, a folder (its images, sorted) or a list of those."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[Path] = []
    folders: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise FileNotFoundError(f"no image files in {item}")
            files.extend(found)
            folders.append(item)
        elif item.is_file():
            if not is_image_file(item):
                raise ValueError(f"not an image file (unknown extension): {item}")
            files.append(item)
            folders.append(item.parent)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    return files, folders


def output_paths(files: Sequence[Path], folders: Sequence[Path], output_dir: str | Path) -> list[Path]:
    """``output_dir / (stem + ".png")`` for every input; refuses the input folder and clashing names."""
    out_dir = Path(output_dir)
    for folder in folders:
        if out_dir.resolve() == folder.resolve():
            raise ValueError(
                f"output folder {out_dir} is the input folder {folder}; choose another (inputs are never overwritten)"
            )
    targets: dict[Path, Path] = {}
    for f in files:
        target = out_dir / f"{f.stem}.png"
        if target in targets:
            raise ValueError(f"{f} and {targets[target]} would both be written to {target}")
        targets[target] = f
    return list(targets)


def derain_paths(
    model: nn.Module, inputs: str | Path | Sequence[str | Path], output_dir: str | Path, *,
    tile: int | None = None, overlap: int | None = None, batch_size: int | None = 1,
    device: str | torch.device = "auto", amp: bool | None = None, channels_last: bool | None = None,
    compile: bool | None = None, stat_passes: int = DEFAULT_STAT_PASSES, progress: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Derain an image file, a folder of images (or a list of those) into ``output_dir/<stem>.png`` (8-bit).

    Streamed: a reader thread decodes the next images and a writer thread encodes finished ones while the model
    runs (PIL releases the GIL while it decodes and encodes). Images of identical size are batched
    ``batch_size`` at a time (``batch_size`` is also the number of tiles per model call when ``tile`` is set;
    None: by image or tile size, :meth:`derain.runtime.InferencePolicy.batch`). ``device``: ``"auto"`` (CUDA if
    available), ``"cpu"``, ``"cuda"``...; the model is moved there. ``amp``, ``channels_last``, ``compile``: as
    :func:`derain_tensor` (None: :func:`derain.runtime.inference_policy`'s, as the CLI). Existing files under
    ``output_dir`` are never replaced unless ``overwrite`` (checked before any work). Memory stays
    bounded: at most ``4 * batch_size`` decoded images wait for a batch partner, and as many for the writer.
    Returns the written paths in input order; errors name the offending file.
    """
    files, folders = collect_inputs(inputs)
    targets = output_paths(files, folders, output_dir)
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{len(existing)} of the {len(targets)} outputs already exist under {output_dir} (e.g. {existing[0]}); "
            "choose an empty --output folder, or pass --overwrite to replace them")
    dev = resolve_device(device)
    model.to(dev)
    policy = InferencePolicy(bool(channels_last), bool(amp), batch_size, bool(compile))
    ahead = 4 * (batch_size or 8)
    pending: dict[tuple[int, int], list[tuple[Path, Path, torch.Tensor]]] = {}
    writes: deque[Future] = deque()
    bar = tqdm(total=len(files), desc="derain", unit="img", disable=not progress)

    def write(src: Path, dst: Path, img: torch.Tensor) -> None:
        try:
            write_image(dst, img)
        except OSError as exc:
            raise OSError(f"cannot write {dst} (derained {src}): {exc}") from exc

    def flush(size: tuple[int, int]) -> None:
        group = pending.pop(size)
        names = ", ".join(str(src) for src, _, _ in group)
        try:
            out = derain_tensor(
                model, torch.stack([img for _, _, img in group]), tile, overlap,
                policy.batch(*((tile, tile) if tile else size)), amp=amp, channels_last=channels_last,
                compile=compile, stat_passes=stat_passes,
            ).cpu()
        except RuntimeError as exc:
            hint = ""
            if "memory" in str(exc).lower() and tile is None:
                hint = " -- out of memory: derain in tiles (--tile 512), so memory depends on the tile, not the image"
            elif "memory" in str(exc).lower():
                hint = f" -- out of memory: use a smaller --tile than {tile} or --batch-size 1"
            raise RuntimeError(f"deraining {names} failed: {exc}{hint}") from exc
        for (src, dst, _), img in zip(group, out, strict=True):
            writes.append(writer.submit(write, src, dst, img))
            while len(writes) > ahead:  # bounded: wait for the oldest write (and surface its error)
                writes.popleft().result()
                bar.update(1)

    with ThreadPoolExecutor(1, thread_name_prefix="derain-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="derain-write") as writer:
        reads: deque[tuple[Path, Path, Future]] = deque()
        todo = iter(zip(files, targets, strict=True))
        try:
            while True:
                while len(reads) < ahead and (nxt := next(todo, None)) is not None:
                    reads.append((nxt[0], nxt[1], reader.submit(read_tensor, nxt[0])))
                if not reads:
                    break
                src, dst, future = reads.popleft()
                img = future.result()  # ImageReadError names the file
                size = (img.shape[1], img.shape[2])
                pending.setdefault(size, []).append((src, dst, img))
                if len(pending[size]) >= policy.batch(*size):
                    flush(size)
                elif sum(map(len, pending.values())) > ahead:
                    flush(max(pending, key=lambda s: len(pending[s])))
            for size in list(pending):
                flush(size)
            while writes:
                writes.popleft().result()
                bar.update(1)
        finally:
            for f in writes:
                f.cancel()
            for *_, f in reads:
                f.cancel()
            bar.close()
    return targets
