"""The benchmark's derain cache: each derained image is computed once and shared by every task and dataset.

A derained image is stored as the 8-bit PNG it would be saved as (deraining papers score saved 8-bit outputs),
under ``<run>/cache/derained/<derainer digest>/<input digest>.png``. The key is the SHA-256 of the exact input
the derainer sees (its float32 pixels and shape, so the clean image, the rain preset, the rain seed or the rain
source file are all in it) plus the digest of the derainer (architecture, options, weights' content, tiling), so
any change to either misses the cache instead of reusing a stale image. Entries are written atomically; an
unreadable entry is recomputed and replaced. Deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from derain.imageio import read_image, write_image


def input_digest(x: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of an image's float32 pixels and shape (``3×H×W`` tensor or ``H×W×3`` array, as given)."""
    arr = np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    h = hashlib.sha256(repr(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round float images in [0, 1] to the 8-bit grid (``k / 255``), as saving them as PNG would."""
    return x.clamp(0, 1).mul(255).round().div(255)


class DerainCache:
    """Derained images of one derainer (``derainer``: its digest), on disk under ``root`` (None: no caching).

    ``hits`` and ``misses`` count lookups, so a run can say how much work the cache saved.
    """

    def __init__(self, root: str | Path | None, derainer: str) -> None:
        self.folder = None if root is None else Path(root) / "derained" / derainer
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.png"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached ``3×H×W`` image in [0, 1] for input digest ``key``, or None."""
        if self.folder is None:
            return None
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            image = torch.from_numpy(np.ascontiguousarray(read_image(path).transpose(2, 0, 1)))
        except OSError as exc:  # ImageReadError included
            warnings.warn(f"derain cache: unreadable entry {path} ({exc}); recomputing it", stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return image

    def put(self, key: str, image: torch.Tensor) -> None:
        """Store a derained ``3×H×W`` image (already on the 8-bit grid, see :func:`quantize`)."""
        if self.folder is not None:
            write_image(self.path(key), image)
