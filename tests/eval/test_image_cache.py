"""The benchmark's image cache: one rainy and one derained image per input, shared by cells and tasks, never stale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from eval.bench import DerainerSpec, derainer_digest, run_bench
from eval.image_cache import ImageCache, input_digest, quantize, rain_key


def cell(out: Path, key: str) -> dict:
    return json.loads((out / "cells" / f"{key}.json").read_text())


def cached_files(out: Path) -> list[Path]:
    return sorted((out / "cache" / "derained").rglob("*.png"))


def test_a_second_task_reuses_the_derained_images(tiny_bench: dict, tmp_path: Path) -> None:
    """det and seg hold the same pixels: the segmentation cells derain nothing, every image is a cache hit."""
    out = tmp_path / "run"
    run_bench(tiny_bench["config"](out, "severities=[heavy]", "samples=0", "bootstrap=0",
                                   f"derainers=[{{name: lite, model: {tiny_bench['root']}/lite}}]"), progress=False)
    n = cell(out, "det__none__clean")["n"]
    assert cell(out, "det__heavy__lite")["derain_cache_hits"] == 0
    assert cell(out, "seg__heavy__lite")["derain_cache_hits"] == n
    assert len(cached_files(out)) == n
    assert len(list((out / "cache" / "rainy").rglob("*.png"))) == n  # rain made once for 2 tasks × 2 cells


def test_rain_key_follows_the_recipe() -> None:
    clean = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32)
    base = rain_key(clean, "heavy", 0, "a.png")
    other = clean.copy()
    other[0, 0, 0] += 1e-3
    assert rain_key(clean.copy(), "heavy", 0, "a.png") == base
    assert len({base, rain_key(other, "heavy", 0, "a.png"), rain_key(clean, "light", 0, "a.png"),
                rain_key(clean, "heavy", 1, "a.png"), rain_key(clean, "heavy", 0, "b.png")}) == 5


def test_cached_batched_prefetched_results_equal_the_plain_route(tiny_bench: dict, tmp_path: Path) -> None:
    """Cache, DataLoader workers and channels_last change where work happens, not a single number."""
    args = ("severities=[heavy]", "samples=0", "bootstrap=50")
    plain = run_bench(tiny_bench["config"](tmp_path / "plain", *args, "cache=false", "workers=0",
                                           "channels_last=false"), progress=False)
    fast = run_bench(tiny_bench["config"](tmp_path / "fast", *args, "workers=2", "channels_last=true"),
                     progress=False)
    assert not (plain / "cache").exists() and cached_files(fast)
    assert (fast / "results.csv").read_text() == (plain / "results.csv").read_text()
    assert (fast / "per_image.csv").read_text() == (plain / "per_image.csv").read_text()


def test_a_changed_derainer_misses_the_cache(tiny_bench: dict, tmp_path: Path) -> None:
    """Weights retrained in place get a new cache folder; the old entries are never read for them."""
    from derain import build_model
    from derain.checkpoint import save_checkpoint

    root = tiny_bench["root"]
    ckpt = tmp_path / "lite"
    save_checkpoint(ckpt, build_model("mspfn-lite", units=1), name="mspfn-lite", config={"units": 1})
    seg_only = (f"datasets=[{{name: seg, task: segmentation, format: masks, path: {root}/scenes/seg, "
                f"model: {root}/seg-model}}]")
    cfg = tiny_bench["config"](tmp_path / "run", seg_only, "severities=[heavy]", "samples=0", "bootstrap=0",
                               f"derainers=[{{name: lite, model: {ckpt}}}]")
    out = run_bench(cfg, progress=False)
    first = {p.parent.parent.name for p in cached_files(out)}
    torch.manual_seed(1)
    model = build_model("mspfn-lite", units=1)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    save_checkpoint(ckpt, model, name="mspfn-lite", config={"units": 1})
    run_bench(cfg, progress=False)
    assert cell(out, "seg__heavy__lite")["derain_cache_hits"] == 0  # recomputed, not read from the old folder
    folders = {p.parent.parent.name for p in cached_files(out)}
    assert len(folders) == 2 and first < folders
    run_bench(cfg, force=True, progress=False)  # the same weights again: all hits
    assert cell(out, "seg__heavy__lite")["derain_cache_hits"] == cell(out, "seg__heavy__lite")["n"]


def test_derainer_digest_follows_what_changes_the_output(tiny_bench: dict) -> None:
    lite = str(tiny_bench["root"] / "lite")
    base = derainer_digest(DerainerSpec(name="a", model=lite), {})
    assert derainer_digest(DerainerSpec(name="renamed", model=lite), {}) == base
    assert derainer_digest(DerainerSpec(name="a", model=lite, tile=32), {}) != base
    # overlap and statistics passes only matter for tiles; autocast makes other outputs
    assert derainer_digest(DerainerSpec(name="a", model=lite, overlap=16, stat_passes=2), {}) == base
    tiled = derainer_digest(DerainerSpec(name="a", model=lite, tile=32), {})
    assert derainer_digest(DerainerSpec(name="a", model=lite, tile=32, overlap=16), {}) != tiled
    assert derainer_digest(DerainerSpec(name="a", model=lite, tile=32, stat_passes=2), {}) != tiled
    assert derainer_digest(DerainerSpec(name="a", model=lite), {}, amp=True) != base
    assert derainer_digest(DerainerSpec(name="a", model="mspfn-lite", options={"units": 1}), {}) != derainer_digest(
        DerainerSpec(name="a", model="mspfn-lite", options={"units": 2}), {})


def test_an_unreadable_entry_is_recomputed(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, "d")
    image = quantize(torch.rand(3, 8, 8))
    key = input_digest(torch.rand(3, 8, 8))
    assert cache.get(key) is None
    cache.put(key, image)
    assert torch.equal(cache.get(key), image)
    cache.path(key).write_bytes(b"\x89PNG truncated")
    with pytest.warns(UserWarning, match="unreadable entry .* recomputing"):
        assert cache.get(key) is None
    assert (cache.hits, cache.misses) == (1, 2)
    assert ImageCache(None, "d").get(key) is None  # caching off


def test_input_digest_sees_every_pixel_and_the_shape() -> None:
    x = torch.rand(3, 4, 6)
    y = x.clone()
    y[1, 2, 3] += 1e-6
    assert input_digest(x) == input_digest(x.clone()) == input_digest(x.numpy())
    assert input_digest(y) != input_digest(x)
    assert input_digest(x.reshape(3, 6, 4)) != input_digest(x)
    q = quantize(torch.tensor([-0.1, 0.4 / 255, 1.6 / 255, 0.999, 2.0]))
    assert torch.allclose(q * 255, torch.tensor([0.0, 0.0, 2.0, 255.0, 255.0]))


def test_results_table_has_no_cache_columns(tiny_bench_run: Path) -> None:
    """The cache is an implementation detail: results.csv keeps its tidy columns."""
    assert "cache" not in ",".join(pd.read_csv(tiny_bench_run / "results.csv").columns)
