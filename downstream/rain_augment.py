"""Rain augmentation for training task models (``derainbench train-task``'s ``rain:``): the "rain-trained task model"
strategy against rain, beside deraining for a clean-trained model and a derainer tuned jointly with the task loss.

Each training image is rained with probability ``p``, on the clean image *before* the task's own augmentation
(crops, flips, mosaic, colour jitter); labels are never touched and the user's files are never written. The rain is
either synthetic (``presets``: rain presets of :mod:`derain.synth`, recorded by versioned name, ``rain100l`` ->
``rain100l@v1``; one picked at random per rained image; new rain every epoch) or pre-rained copies of the training
images (``path``: read the way ``bench`` reads a rain source, :func:`downstream.rain_sources.match_rain_source`;
``raincityscapes:`` picks a RainCityscapes setting), which are the same every epoch.

Determinism (the recorded ``seed`` reproduces exactly the rain seen): image ``key`` (its path relative to the
training image folder, posix) at ``draw`` (the epoch for YOLO, the sample number in the segmentation loop) ::

    rng = np.random.default_rng([seed, draw, zlib.crc32(key.encode())])
    rained = rng.random() < p
    preset = presets[rng.integers(len(presets))]          # synthetic rain only
    rainy = derain.synth.synthesize(image, preset, seed=int(rng.integers(2**31)))[0]

Nothing else draws from that generator, so ``p = 0`` trains exactly like no rain at all.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from derain.config import ConfigError


@dataclass
class RainAugment:
    """``train-task``'s ``rain:`` (and the ``rain=`` of :func:`downstream.detection.train_detector` and
    :func:`downstream.segmentation.train_segmenter`). Give ``presets`` or ``path``, not both."""

    presets: list[str] = field(default_factory=list)  # synthetic rain presets (e.g. [rain100l, rain100h])
    p: float = 0.5  # probability that an image is rained (per image and epoch)
    seed: int | None = None  # None: the run's seed (recorded resolved)
    path: str | None = None  # pre-rained copies of the training images (a folder, like bench's rainy: path)
    raincityscapes: dict[str, Any] | None = None  # with path = leftImg8bit_rain/train: {alpha, beta, dropsize, pattern}

    def resolve(self, seed: int) -> RainAugment:
        """Checked copy with versioned preset names and a concrete seed (``seed`` when none was set): what the run
        records. Errors are ConfigErrors naming the ``rain.`` key."""
        from derain.synth import resolve_preset

        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"rain.p must be a probability in [0, 1], got {self.p!r}")
        if self.presets and self.path:
            raise ConfigError("rain: give rain.presets (synthetic rain) or rain.path (rainy copies), not both")
        if not self.presets and not self.path:
            raise ConfigError("rain: give rain.presets (synthetic rain, e.g. rain.presets=[rain100l,rain100h]) or "
                              "rain.path (a folder of rainy copies of the training images)")
        if self.path and not Path(self.path).is_dir():
            raise FileNotFoundError(f"rain.path: folder not found: {self.path} (a folder of rainy copies of the "
                                    "training images, e.g. what `derainbench synth --with-labels DATA DATA-rainy` "
                                    "writes)")
        if self.raincityscapes is not None and not self.path:
            raise ConfigError("rain.raincityscapes needs rain.path (the RainCityscapes folder leftImg8bit_rain/train)")
        try:
            presets = [resolve_preset(str(name)) for name in self.presets]
        except ValueError as exc:
            raise ConfigError(f"rain.presets: {exc}") from None
        if self.raincityscapes is not None:
            from downstream.raincityscapes import check_select

            check_select(self.raincityscapes, "rain.path")  # a bad setting is refused before training
        run_seed = seed if self.seed is None else self.seed
        if run_seed < 0:
            raise ConfigError(f"rain.seed must be >= 0, got {run_seed}")
        return dataclasses.replace(self, presets=presets, p=float(self.p), seed=int(run_seed),
                                   path=str(self.path) if self.path else None)


@dataclass(frozen=True)
class RainDraw:
    """What one image gets at one draw: a synthetic preset and its synthesis seed, or the pre-rained file."""

    preset: str | None = None
    seed: int | None = None
    file: Path | None = None


class TrainingRain:
    """A resolved :class:`RainAugment` bound to one training set: ``keys[i]`` names image ``i`` (its path relative
    to the training image folder), ``files[i]`` is its rainy copy (pre-rained rain only)."""

    def __init__(self, rain: RainAugment, keys: Sequence[str], files: Sequence[Path] | None = None) -> None:
        if rain.seed is None or (rain.presets and any("@v" not in p for p in rain.presets)):
            raise ValueError("TrainingRain needs a resolved RainAugment (RainAugment.resolve)")
        if rain.path and (files is None or len(files) != len(keys)):
            raise ValueError("pre-rained rain needs one rainy file per training image")
        self.rain, self.keys, self.files = rain, list(keys), list(files) if files is not None else None

    def __len__(self) -> int:
        return len(self.keys)

    def draw(self, i: int, draw: int) -> RainDraw | None:
        """The rain image ``i`` gets at ``draw`` (None: it stays clean); see the module docstring."""
        rng = np.random.default_rng([int(self.rain.seed or 0), int(draw), zlib.crc32(self.keys[i].encode())])
        if not rng.random() < self.rain.p:
            return None
        if self.files is not None:
            return RainDraw(file=self.files[i])
        preset = self.rain.presets[int(rng.integers(len(self.rain.presets)))]
        return RainDraw(preset=preset, seed=int(rng.integers(2**31)))

    def __call__(self, image: np.ndarray, i: int, draw: int, original: tuple[int, int] | None = None) -> np.ndarray:
        """Image ``i`` (``H×W×3`` float RGB in [0, 1]: the clean image as read, or resized as a trainer loads it from a
        file of ``original`` (H, W)) as rained at ``draw``; ``image`` itself when it stays clean. A pre-rained copy
        must have the clean file's size and is resized to ``image``'s."""
        what = self.draw(i, draw)
        if what is None:
            return image
        if what.file is None:
            from derain.synth import synthesize

            return synthesize(image, what.preset or "", seed=int(what.seed or 0))[0]
        return read_rainy_copy(what.file, image.shape[:2], original)


def read_rainy_copy(path: Path, shape: tuple[int, int], original: tuple[int, int] | None = None) -> np.ndarray:
    """The rainy copy at ``path`` as ``shape`` (H, W) float RGB: its size must be the clean image's ``original`` (H,
    W; default ``shape``), and it is resized (bilinear) to ``shape`` when that differs."""
    from derain.imageio import read_image

    rainy = read_image(path)
    want = original or shape
    if rainy.shape[:2] != tuple(want):
        raise ValueError(f"rain.path: rainy copy {path} is {rainy.shape[1]}×{rainy.shape[0]} but its clean image is "
                         f"{want[1]}×{want[0]}; rainy copies must keep the image size (labels are shared)")
    if rainy.shape[:2] != tuple(shape):
        import cv2

        rainy = cv2.resize(rainy, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(rainy, 0.0, 1.0).astype(np.float32)


@dataclass
class _Source:
    """A rain source as :func:`downstream.rain_sources.match_rain_source` reads it."""

    name: str
    path: str
    raincityscapes: dict[str, Any] | None = None


class _Images:
    """The image list of a training set, as the rain-source matcher reads a dataset."""

    def __init__(self, paths: Sequence[str | Path], images_dir: Path) -> None:
        self.paths, self.images_dir = [Path(p) for p in paths], images_dir

    def image_path(self, i: int) -> Path:
        return self.paths[i]


def image_folder(paths: Sequence[str | Path]) -> Path:
    """The folder the keys of ``paths`` are relative to: the deepest folder holding them all."""
    parents = [os.path.abspath(Path(p).parent) for p in paths]
    return Path(os.path.commonpath(parents)) if parents else Path(".")


def bind_rain(rain: RainAugment, paths: Sequence[str | Path], images_dir: str | Path | None = None) -> TrainingRain:
    """``rain`` (resolved) bound to the training images at ``paths`` (in dataset order): keys relative to
    ``images_dir`` (default: :func:`image_folder`), rainy copies matched when ``rain.path`` is set (errors name the
    images without one)."""
    root = Path(images_dir) if images_dir is not None else image_folder(paths)
    keys = [Path(os.path.relpath(os.path.abspath(p), os.path.abspath(root))).as_posix() for p in paths]
    files = None
    if rain.path:
        from downstream.rain_sources import match_rain_source

        files = match_rain_source(_Source("rain.path", rain.path, rain.raincityscapes), _Images(paths, root),
                                  len(paths))
    return TrainingRain(rain, keys, files)


def bind_to_dataset(rain: RainAugment, dataset: Any) -> TrainingRain:
    """``rain`` bound to a task dataset (``image_path(i)`` and ``images_dir``, as :mod:`downstream.datasets` opens
    them); a dataset without image paths keys its images by index (``#0``, ``#1``, ...; synthetic rain only)."""
    if hasattr(dataset, "image_path") and hasattr(dataset, "images_dir"):
        paths = [dataset.image_path(i) for i in range(len(dataset))]
        return bind_rain(rain, paths, dataset.images_dir)
    if rain.path:
        raise ValueError("rain.path needs a dataset that names its image files (image_path, images_dir)")
    return TrainingRain(rain, [f"#{i}" for i in range(len(dataset))])
