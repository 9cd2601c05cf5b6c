"""Fixtures of the downstream tests: ultralytics offline for every test, one training thread on request, and the
tiny shapes data set the tests against ultralytics' own validators train on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLO_OFFLINE", "1")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train on one core (the test machine is shared) and restore the thread count afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def shapes_dataset(root: Path, n: int = 48, size: int = 64, seed: int = 0, segments: bool = False) -> Path:
    """A YOLO-layout set of ``n`` dark ``size``² images with 1–2 big shapes, red squares (0) and blue discs (1), side
    by side when there are two; labels are boxes, or with ``segments`` the shapes' polygons (YOLO-seg; discs drawn
    as the 24-gons of their labels). train = val, so a few epochs give a model that clearly works. Returns the
    data.yaml."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (root / sub / "train").mkdir(parents=True, exist_ok=True)
    half = size // 2
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    for i in range(n):
        img = Image.new("RGB", (size, size), (20, 20, 20))
        draw = ImageDraw.Draw(img)
        classes = rng.integers(0, 2, size=int(rng.integers(1, 3)))
        lines = []
        for j, c in enumerate(classes):
            s = int(rng.integers(size // 4, half - 1))
            lo = j * half if len(classes) == 2 else 0  # two shapes: one per half, never overlapping
            hi = lo + (half if len(classes) == 2 else size) - s
            x0, y0 = int(rng.integers(lo, hi + 1)), int(rng.integers(0, size - s + 1))
            fill = (240, 40, 40) if c == 0 else (40, 80, 240)
            if segments:  # the label polygon is what is drawn
                if c == 0:
                    poly = np.array([[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s]], dtype=float)
                else:
                    poly = np.stack([x0 + s / 2 + s / 2 * np.cos(angles), y0 + s / 2 + s / 2 * np.sin(angles)], 1)
                draw.polygon([tuple(p) for p in poly], fill=fill)
                lines.append(f"{c} " + " ".join(f"{v:.6f}" for v in (poly / size).reshape(-1)))
            else:  # an s×s pixel square or disc inside its box
                (draw.rectangle if c == 0 else draw.ellipse)((x0, y0, x0 + s - 1, y0 + s - 1), fill=fill)
                lines.append(f"{c} {(x0 + s / 2) / size:.6f} {(y0 + s / 2) / size:.6f} {s / size:.6f} {s / size:.6f}")
        img.save(root / "images" / "train" / f"{i:03d}.png")
        (root / "labels" / "train" / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n  0: square\n  1: disc\n")
    return data


@pytest.fixture
def shapes() -> Callable[..., Path]:
    """:func:`shapes_dataset`, for tests to call with their own folder and options."""
    return shapes_dataset


@pytest.fixture(scope="session")
def cityscapes_segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained U-Net checkpoint over the 19 Cityscapes train-id classes (Cityscapes, ACDC datasets)."""
    from downstream.cityscapes import TRAIN_NAMES
    from downstream.segmentation import SegmenterConfig, build_segmenter, save_segmenter

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("cityscapes-segmenter")
    seg = build_segmenter(SegmenterConfig(arch="Unet", encoder="resnet18", num_classes=19, classes=list(TRAIN_NAMES),
                                          encoder_depth=3, decoder_channels=[16, 8, 8]))
    save_segmenter(seg, out)
    return out
