"""The benchmark's image cache: each rainy and each derained image is computed once per run folder and shared by
every cell, task and dataset that needs it.

Images are stored as the 8-bit PNGs they would be saved as (deraining papers score saved 8-bit outputs), under
``<run>/cache/rainy/`` and ``<run>/cache/derained/<derainer digest>/``. Keys are digests of everything that
determines the image:

- an input's key (:func:`input_key`) is the SHA-256 of its pixels when they come from a file (clean images, rain
  sources), and for synthesized rain the digest of the clean pixels, the preset's parameters, the seed, the file
  name, and the source of the synthesizer and the numpy version (so an edited synthesizer never reuses old rain);
- a derained image is stored under its input's key in the folder of the derainer's digest (architecture,
  options, weights' content, tiling; see ``eval.fingerprints.derainer_digest``).

Any change therefore misses the cache instead of reusing a stale image. Entries are written atomically; an
unreadable entry is recomputed and replaced. Deleting the folder is always safe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from derain import metrics, synth
from derain.imageio import read_image, write_image


def input_digest(x: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of an image's float32 pixels and shape (``3×H×W`` tensor or ``H×W×3`` array, as given)."""
    arr = np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    h = hashlib.sha256(repr(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


@functools.cache
def synthesizer_digest() -> str:
    """Digest of the rain synthesizer's source file and the numpy version (its random streams)."""
    return hashlib.sha256(Path(synth.__file__).read_bytes() + np.__version__.encode()).hexdigest()


def rain_key(clean: np.ndarray, severity: str, seed: int, name: str) -> str:
    """The key of the rain ``eval.cells.rainy_image(clean, severity, seed, name)`` synthesizes."""
    recipe = {"clean": input_digest(clean), "preset": asdict(synth.PRESETS[severity]), "seed": seed, "name": name,
              "synthesizer": synthesizer_digest()}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] rounded to the 8-bit grid (``k / 255``, float32), as saving them as PNG would."""
    return (metrics.quantize(x) / 255.0).float()


class ImageCache:
    """``3×H×W`` images in [0, 1] on the 8-bit grid, as PNGs under ``root/namespace`` (root None: no caching).

    ``hits`` and ``misses`` count lookups, so a run can say how much work the cache saved.
    """

    def __init__(self, root: str | Path | None, namespace: str) -> None:
        self.folder = None if root is None else Path(root) / namespace
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.png"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached image for ``key``, or None."""
        if self.folder is None:
            return None
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            image = torch.from_numpy(np.ascontiguousarray(read_image(path).transpose(2, 0, 1)))
        except OSError as exc:  # ImageReadError included
            warnings.warn(f"image cache: unreadable entry {path} ({exc}); recomputing it", stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return image

    def put(self, key: str, image: torch.Tensor) -> None:
        """Store a ``3×H×W`` image (already on the 8-bit grid, see :func:`quantize`)."""
        if self.folder is not None:
            write_image(self.path(key), image)
