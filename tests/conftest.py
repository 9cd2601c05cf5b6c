"""Shared fixtures: the optional real sample data in ../shared/data (tests using it skip when absent) and a tiny
benchmark (generated scenes, untrained task models, identity + mspfn-lite derainers) with one finished run."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# torch.compile costs 10-75 s per new graph on these 2 cores; tests (and the CLI runs they spawn) run derainers
# uncompiled unless they ask for compilation (tests/derain/test_runtime.py checks it gives the same outputs).
os.environ.setdefault("DERAINBENCH_COMPILE", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when the folder is not there (a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture
def free_port() -> str:
    """A TCP port nobody listens on now, for torchrun's rendezvous (fixed ports collide when two suites run)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Scenes (8 of 64 px), a tiny untrained U-Net, a 1-unit mspfn-lite checkpoint, and ``config(out, *overrides)``
    building a BenchConfig over them (2 datasets × light/heavy × identity/lite, CPU, one sample image)."""
    from derain import build_model
    from derain.checkpoint import save_checkpoint
    from derain.config import load_config
    from downstream.scenes import generate_scenes
    from downstream.segmentation import SegmenterConfig, build_segmenter, save_segmenter
    from eval.bench import BenchConfig

    torch.manual_seed(0)  # session fixtures run before the per-test seeding: the tiny models must not vary
    root = tmp_path_factory.mktemp("tiny-bench")
    info = generate_scenes(root / "scenes", n=8, size=64, seed=0, progress=False)
    seg_classes = (root / "scenes/seg/classes.txt").read_text().split()
    seg = build_segmenter(SegmenterConfig(arch="Unet", encoder="resnet18", num_classes=len(seg_classes),
                                          classes=seg_classes, encoder_depth=3, decoder_channels=[16, 8, 8]))
    save_segmenter(seg, root / "seg-model")
    save_checkpoint(root / "lite", build_model("mspfn-lite", units=1), name="mspfn-lite", config={"units": 1})

    def config(out: Path, *extra: str) -> BenchConfig:
        args = [
            f"out={out}", "device=cpu", "severities=[light, heavy]", "samples=1",
            f"datasets=[{{name: det, task: detection, format: yolo, path: {root}/scenes/det/data.yaml, "
            f"model: yolo11n.yaml, imgsz: 64}}, {{name: seg, task: segmentation, format: masks, "
            f"path: {root}/scenes/seg, model: {root}/seg-model}}]",
            f"derainers=[{{name: identity, model: identity}}, {{name: lite, model: {root}/lite}}]",
            *extra,
        ]
        return load_config(BenchConfig, None, args)

    return {"root": root, "info": info, "config": config}


@pytest.fixture(scope="session")
def tiny_bench_run(tiny_bench: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny benchmark run (seed 0, two sample images per condition); treat it as read-only."""
    from eval.bench import run_bench

    config: Callable[..., Any] = tiny_bench["config"]
    return run_bench(config(tmp_path_factory.mktemp("tiny-run") / "run", "samples=2"), progress=False)
