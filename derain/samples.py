"""Colour photographs shipped inside the scikit-image package: the embedded default data of derainbench.

They are read straight from the installed package folder (never through ``skimage.data``'s fetcher, which may
try to download), so they work offline. Synthetic images (colorwheel, logo, chessboard) and grayscale ones
(camera, coins, moon, ...) are excluded.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

from derain.imageio import read_image

# name -> file inside ``skimage/data`` (all colour photographs of real scenes or specimens).
PHOTO_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "retina": "retina.jpg",
}


def skimage_data_dir() -> Path:
    """Folder of the data files inside the installed scikit-image package."""
    return Path(str(resources.files("skimage") / "data"))


def sample_photos(min_size: int = 0) -> dict[str, np.ndarray]:
    """The packaged colour photos whose shorter side is at least ``min_size`` px, by name.

    Values are read-only ``H×W×3`` float32 RGB arrays in [0, 1] (cached, so copy before editing).
    Photos missing from a trimmed installation are left out; none at all is a RuntimeError.
    """
    photos = _load_all()
    if not photos:
        raise RuntimeError(f"no sample photos found in {skimage_data_dir()} (is scikit-image installed fully?)")
    return {name: arr for name, arr in photos if min(arr.shape[:2]) >= min_size}


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[tuple[str, np.ndarray], ...]:
    """Read every available photo once; arrays are made read-only so the cache cannot be corrupted."""
    folder = skimage_data_dir()
    out = []
    for name, fname in PHOTO_FILES.items():
        path = folder / fname
        if not path.is_file():
            continue
        arr = read_image(path)
        arr.setflags(write=False)
        out.append((name, arr))
    return tuple(out)
