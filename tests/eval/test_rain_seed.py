"""One seeding rule for synthetic rain (issue 27 item 8): bench's in-memory rain of an image is the file `derainbench
synth --seed S` writes for it from the dataset's image folder; the per-image seed comes from the image's path
relative to that folder, so nested layouts (Cityscapes {city}/, ACDC {seq}/) agree too and two images of one file
name in different folders get different rain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from derain.imageio import read_image
from derain.synth import synthesize_folder
from eval.cells import CellInputs


class _Nested:
    """Two identical images of one file name in two folders (a stand-in for any nested dataset)."""

    def __init__(self, root: Path) -> None:
        self.images_dir = root
        self.paths = [root / "aachen" / "x.png", root / "bochum" / "x.png"]
        pixels = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
        for p in self.paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(p)

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, i: int) -> Path:
        return self.paths[i]

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        return read_image(self.paths[i]), None


def test_bench_rain_is_synths_file_for_nested_layouts(tmp_path: Path) -> None:
    ds = _Nested(tmp_path / "images")
    synthesize_folder(ds.images_dir, tmp_path / "rainy", preset="light", seed=3, progress=False)
    cells = CellInputs(ds, [0, 1], "light", 3, clean=False, rainy_files=None, cache_root=None, derainer=None)
    xs = [cells[k].x.permute(1, 2, 0).numpy() for k in range(2)]
    for x, rel in zip(xs, ["aachen/x.png", "bochum/x.png"], strict=True):
        np.testing.assert_array_equal(x, read_image(tmp_path / "rainy" / rel))
    assert not np.array_equal(xs[0], xs[1])  # one file name, two folders: two rains
