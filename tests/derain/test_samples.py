"""Embedded sample photos: offline, colour, float in [0, 1], cached and read-only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage

from derain.samples import PHOTO_FILES, sample_photos, skimage_data_dir


def test_photos_are_colour_float_images() -> None:
    photos = sample_photos()
    assert {"astronaut", "chelsea", "coffee", "rocket"} <= set(photos)
    for name, arr in photos.items():
        assert arr.ndim == 3 and arr.shape[2] == 3, name
        assert arr.dtype == np.float32, name
        assert 0.0 <= arr.min() and arr.max() <= 1.0, name
        assert not np.allclose(arr[..., 0], arr[..., 1]), f"{name} looks grayscale"


def test_photos_come_from_the_installed_package() -> None:
    folder = skimage_data_dir()
    assert folder.resolve().is_relative_to(Path(skimage.__file__).resolve().parent)
    for name in sample_photos():
        assert (folder / PHOTO_FILES[name]).is_file()
    assert not {"colorwheel", "logo", "camera", "coins"} & set(PHOTO_FILES)


def test_cached_and_read_only() -> None:
    a, b = sample_photos(), sample_photos()
    assert a is not b
    assert all(a[k] is b[k] for k in a)
    with pytest.raises(ValueError):
        a["coffee"][0, 0, 0] = 0.5


def test_min_size_filters_by_shorter_side() -> None:
    photos = sample_photos()
    big = sample_photos(min_size=400)
    assert set(big) == {k for k, v in photos.items() if min(v.shape[:2]) >= 400}
    assert "chelsea" not in big and "astronaut" in big
    assert sample_photos(min_size=100_000) == {}
