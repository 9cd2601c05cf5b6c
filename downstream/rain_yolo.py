"""Rain augmentation inside ultralytics' YOLO training (detection, instance): a per-epoch dataset hook.

How (the choice, against K pre-rendered copies: no extra disk, new rain every epoch): a callback at the start of
every epoch makes the train loader's dataset a :class:`RainyYOLODataset` and wraps its batch sampler in
:class:`EpochBatches`, which hands the dataset ``(epoch, index)`` instead of ``index``. The epoch thus travels with
each sample into ultralytics' dataloader workers (whatever their number, fork or spawn), so the rain of image ``i``
in epoch ``e`` is the same however batches are spread over workers or prefetched. The rain is applied in
``load_image``, to the clean image as ultralytics reads it (BGR, resized so its long side is ``imgsz``), before
mosaic, affine, HSV and flips; ultralytics' own image cache keeps the clean image. Labels are never touched. The
validation loader stays clean.

One pass of the wrapped sampler is one epoch of ultralytics' ``InfiniteDataLoader``; when ultralytics restarts the
loader (``close_mosaic``) the next pass is the trainer's current epoch, and a loader rebuilt after an out-of-memory
retry is wrapped again at its epoch's start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from downstream.detection import offline_ultralytics
from downstream.rain_augment import RainAugment, TrainingRain, bind_rain

offline_ultralytics()

from ultralytics.data.dataset import YOLODataset  # noqa: E402  (after offline_ultralytics)

_HOOKED = "_derainbench_rain"  # the attribute that marks a train loader as wrapped


class RainyYOLODataset(YOLODataset):
    """ultralytics' ``YOLODataset`` that rains each image as it is loaded (see the module docstring). Attributes set
    by :func:`rain_train_loader`: ``rain`` (the bound :class:`TrainingRain`) and ``rain_epoch`` (the epoch of the
    sample being built; None outside training: clean images)."""

    rain: TrainingRain
    rain_epoch: int | None = None

    def __getitem__(self, index: Any) -> dict[str, Any]:
        if isinstance(index, tuple):
            self.rain_epoch, index = index
        return super().__getitem__(index)

    def load_image(self, i: int, *args: Any, **kwargs: Any) -> tuple[np.ndarray, Any, Any]:
        """ultralytics' image ``i`` (BGR uint8, resized), rained for :attr:`rain_epoch`; mosaic partners loaded for
        the same sample get the same epoch's rain (cached per (epoch, image) while the epoch lasts)."""
        im, hw0, hw = super().load_image(i, *args, **kwargs)
        epoch = self.rain_epoch
        if epoch is None:
            return im, hw0, hw
        cache = self.__dict__.setdefault("_rain_cache", {})
        if (epoch, i) not in cache:
            if len(cache) >= max(int(getattr(self, "max_buffer_length", 0)), 16) or any(e != epoch for e, _ in cache):
                cache.clear()
            cache[(epoch, i)] = rain_bgr(self.rain, im, i, epoch, tuple(hw0))
        return cache[(epoch, i)].copy(), hw0, hw


def rain_bgr(rain: TrainingRain, im: np.ndarray, i: int, epoch: int, original: tuple[int, int]) -> np.ndarray:
    """``im`` (ultralytics' ``H×W×3`` BGR uint8) rained for ``epoch`` as ``rain`` draws it: converted to RGB in
    [0, 1], rained, rounded back to BGR uint8 (``im`` itself when it stays clean). ``original``: the file's (H, W)
    before ultralytics resized it (what a pre-rained copy must match)."""
    if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
        raise ValueError(f"rain augmentation needs 8-bit RGB images; {rain.keys[i]} loads as {im.dtype} "
                         f"{'x'.join(map(str, im.shape))}")
    if rain.draw(i, epoch) is None:
        return im
    rgb = np.ascontiguousarray(im[..., ::-1], dtype=np.float32) / 255.0
    out = rain(rgb, i, epoch, original=original)
    return np.ascontiguousarray((np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[..., ::-1])


class EpochBatches:
    """A batch sampler whose every pass (one epoch of ultralytics' ``InfiniteDataLoader``) yields its batches as
    ``[(epoch, index), ...]``; ``next_epoch`` is the epoch of the next pass."""

    def __init__(self, batches: Any, first_epoch: int) -> None:
        self.batches, self.next_epoch = batches, int(first_epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        for batch in self.batches:
            yield [(epoch, int(i)) for i in batch]


def rain_train_loader(trainer: Any, rain: RainAugment) -> TrainingRain:
    """Make ``trainer.train_loader`` rain its images from ``trainer.epoch`` on (see the module docstring); a loader
    already wrapped is left as it is. Returns the bound rain."""
    loader = trainer.train_loader
    bound = getattr(loader, _HOOKED, None)
    if bound is not None:
        return bound
    dataset = loader.dataset
    if type(dataset) is not YOLODataset:
        raise ValueError(f"rain augmentation hooks ultralytics' YOLODataset, but this training uses "
                         f"{type(dataset).__name__}")
    if getattr(loader, "iterator", None) is not None:
        raise RuntimeError("rain augmentation: the train loader was already iterated before the epoch began")
    # the files behind the links train-task writes to OUT/data for coco/bdd100k/voc sets: keys and rainy copies are
    # matched against the user's image folder, as bench matches them
    bound = bind_rain(rain, [os.path.realpath(f) for f in dataset.im_files])
    dataset.__class__ = RainyYOLODataset
    dataset.rain, dataset.rain_epoch = bound, None
    batches = EpochBatches(loader.batch_sampler.sampler, trainer.epoch)
    loader.batch_sampler.sampler = batches
    restart = loader.reset

    def reset() -> None:  # ultralytics restarts the loader at an epoch's start (close_mosaic): that epoch is next
        restart()
        batches.next_epoch = trainer.epoch

    loader.reset = reset
    setattr(loader, _HOOKED, bound)
    return bound


def add_rain_callback(yolo: Any, rain: RainAugment) -> None:
    """Register the hook on an ultralytics ``YOLO`` before ``yolo.train``: at every epoch's start the train loader
    is wrapped (once per loader)."""
    yolo.add_callback("on_train_epoch_start", lambda trainer: rain_train_loader(trainer, rain))
