"""derain.data: pair discovery and its errors, the Dataset, deterministic patch batches, on-the-fly rain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from derain.data import (
    PairedImages,
    PairError,
    PatchSampler,
    SynthPairs,
    dihedral,
    dihedral_inverse,
    find_pairs,
    natural_key,
    pairs_from_dirs,
    sample_batch,
    validate_pairs,
)


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_root(root: Path, layout: tuple[str, str], names: list[str], prefixes: tuple[str, str] = ("", ""),
              size: tuple[int, int] = (12, 16), seed: int = 0) -> Path:
    """A paired folder whose clean image i is random and rainy image = 255 - clean (so pairs are checkable)."""
    rng = np.random.default_rng(seed)
    for name in names:
        clean = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        save_png(root / layout[0] / f"{prefixes[0]}{name}.png", 255 - clean)
        save_png(root / layout[1] / f"{prefixes[1]}{name}.png", clean)
    return root


class ArraySource:
    """A minimal pair source over in-memory arrays: rainy = 1 - clean."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def get_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return 1.0 - self.images[i], self.images[i]


@pytest.fixture
def source(rng: np.random.Generator) -> ArraySource:
    shapes = [(40, 50), (33, 61), (48, 48), (64, 36), (29, 80)]
    return ArraySource([rng.random((*s, 3), dtype=np.float32) for s in shapes])


# ------------------------------------------------------------------------------------------ discovery


@pytest.mark.parametrize("layout,prefixes", [
    (("rain", "norain"), ("rain-", "norain-")),
    (("input", "target"), ("", "")),
    (("rainy", "gt"), ("", "")),
])
def test_layouts_detected_and_naturally_sorted(tmp_path: Path, layout, prefixes) -> None:
    names = ["10", "2", "1", "003", "11"]
    make_root(tmp_path, layout, names, prefixes)
    pairs = find_pairs(tmp_path)
    assert [p.name for p in pairs] == ["1", "2", "003", "10", "11"]
    for p in pairs:
        assert p.rainy == tmp_path / layout[0] / f"{prefixes[0]}{p.name}.png"
        assert p.clean == tmp_path / layout[1] / f"{prefixes[1]}{p.name}.png"


def test_natural_key() -> None:
    names = ["img10.png", "img2.png", "Img1.png", "img1b.png", "a.png"]
    assert sorted(names, key=natural_key) == ["a.png", "Img1.png", "img1b.png", "img2.png", "img10.png"]


def test_no_layout_lists_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(PairError, match=r"rain/ \+ norain/.*input/ \+ target/.*rainy/ \+ gt/"):
        find_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_pairs(tmp_path / "nowhere")


def test_rain14000_many_rainy_images_per_clean_one(tmp_path: Path, rng: np.random.Generator) -> None:
    """rainy_image/i_j.jpg <-> ground_truth/i.jpg: every rainy version is a pair with the same clean image."""
    for i in (1, 2, 10):
        clean = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
        save_png(tmp_path / "ground_truth" / f"{i}.jpg", clean)  # PIL writes by extension: a JPEG
        for j in (1, 2, 14):
            save_png(tmp_path / "rainy_image" / f"{i}_{j}.png", 255 - clean)
    pairs = find_pairs(tmp_path)
    assert [p.name for p in pairs] == ["1_1", "1_2", "1_14", "2_1", "2_2", "2_14", "10_1", "10_2", "10_14"]
    assert all(p.clean == tmp_path / "ground_truth" / f"{p.name.split('_')[0]}.jpg" for p in pairs)
    assert all(p.rainy == tmp_path / "rainy_image" / f"{p.name}.png" for p in pairs)
    ds = PairedImages(pairs, cache=False)
    assert len(ds) == 9 and ds[4][1].shape == (3, 10, 12)


def test_rain14000_unmatched_files_are_named(tmp_path: Path, rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for name in ("1_1", "1_2", "3_1", "nosuffix"):
        save_png(tmp_path / "rainy_image" / f"{name}.png", img)
    for name in ("1", "2"):
        save_png(tmp_path / "ground_truth" / f"{name}.png", img)
    with pytest.raises(PairError) as err:
        find_pairs(tmp_path)
    msg = str(err.value)
    assert "3 bad pair(s)" in msg and "3_1.png: no clean image 3.*" in msg
    assert "nosuffix.png: a rainy image here must be named <clean name>_<k>" in msg
    assert "2.png: no rainy image 2_<k>.* matches it" in msg
    with pytest.warns(UserWarning, match="skipped 3 bad pair"):
        assert [p.name for p in find_pairs(tmp_path, skip_bad=True)] == ["1_1", "1_2"]


def test_prenet_flat_folder(tmp_path: Path, rng: np.random.Generator) -> None:
    """PReNet's RainTrainH/L: rain-N.png beside norain-N.png in one folder."""
    for n in (1, 2, 10):
        img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
        save_png(tmp_path / f"norain-{n}.png", img)
        save_png(tmp_path / f"rain-{n}.png", 255 - img)
    pairs = find_pairs(tmp_path)
    assert [(p.name, p.rainy.name, p.clean.name) for p in pairs] == [
        (n, f"rain-{n}.png", f"norain-{n}.png") for n in ("1", "2", "10")]
    rainy, clean = PairedImages(pairs, cache=False).get_pair(2)
    np.testing.assert_allclose(rainy, 1 - clean, atol=1e-6)
    save_png(tmp_path / "rain-11.png", 255 - img)
    save_png(tmp_path / "readme.png", img)
    with pytest.raises(PairError, match=r"readme.png: neither rain-\* nor norain-\*"):
        find_pairs(tmp_path)
    (tmp_path / "readme.png").unlink()
    with pytest.raises(PairError, match="rain-11.png: no clean image matches it"):
        find_pairs(tmp_path)


def test_no_layout_error_lists_what_was_found(tmp_path: Path, rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    (tmp_path / "photos").mkdir()
    (tmp_path / "labels").mkdir()
    save_png(tmp_path / "rain-1.png", img)
    save_png(tmp_path / "a.png", img)
    with pytest.raises(PairError) as err:
        find_pairs(tmp_path)
    msg = str(err.value)
    assert "found 2 folder(s): labels/, photos/ and 2 image(s) (1 named rain-*, 0 named norain-*, 1 other)" in msg
    assert "rainy_image/ + ground_truth/" in msg and "rain-N + norain-N images side by side" in msg


def test_explicit_dirs_match_stems_across_extensions(tmp_path: Path, rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    save_png(tmp_path / "r" / "x1.png", img)
    save_png(tmp_path / "c" / "x1.bmp", img)
    save_png(tmp_path / "r" / "x2.png", img)
    Image.fromarray(img).save(tmp_path / "c" / "x2.jpg")
    pairs = pairs_from_dirs(tmp_path / "r", tmp_path / "c")
    assert [(p.name, p.clean.suffix) for p in pairs] == [("x1", ".bmp"), ("x2", ".jpg")]


def test_unmatched_files_are_named(tmp_path: Path) -> None:
    make_root(tmp_path, ("input", "target"), ["1", "2", "3"])
    (tmp_path / "input" / "2.png").rename(tmp_path / "input" / "2b.png")
    with pytest.raises(PairError, match=r"(?s)2b\.png: no clean image.*target/2\.png: no rainy image"):
        find_pairs(tmp_path)
    with pytest.warns(UserWarning, match="skipped 2 bad pair"):
        pairs = find_pairs(tmp_path, skip_bad=True)
    assert [p.name for p in pairs] == ["1", "3"]


def test_duplicate_stems_are_named(tmp_path: Path, rng: np.random.Generator) -> None:
    make_root(tmp_path, ("rainy", "gt"), ["1", "2"])
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "gt" / "1.jpg")
    with pytest.raises(PairError, match=r"1\.jpg.*same name stem"):
        find_pairs(tmp_path)


def test_size_mismatch_names_both_files(tmp_path: Path, rng: np.random.Generator) -> None:
    make_root(tmp_path, ("input", "target"), ["1", "2", "3"])
    save_png(tmp_path / "target" / "2.png", rng.integers(0, 256, (12, 15, 3), dtype=np.uint8))
    with pytest.raises(PairError, match=r"input/2\.png is 16×12 but .*target/2\.png is 15×12"):
        find_pairs(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 bad pair"):
        assert [p.name for p in find_pairs(tmp_path, skip_bad=True)] == ["1", "3"]
    # without the header check the Dataset catches it when loading
    ds = PairedImages(find_pairs(tmp_path, validate=False), cache=False)
    with pytest.raises(PairError, match=r"input/2\.png.*target/2\.png"):
        ds[1]


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    make_root(tmp_path, ("rain", "norain"), ["1", "2"], ("rain-", "norain-"))
    (tmp_path / "norain" / "norain-2.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(PairError, match=r"norain-2\.png: unreadable"):
        find_pairs(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 bad pair"):
        pairs = find_pairs(tmp_path, skip_bad=True)
    assert [p.name for p in pairs] == ["1"]
    with pytest.raises(PairError, match="norain-2.png"):
        PairedImages(find_pairs(tmp_path, validate=False), cache=False).get_pair(1)
    with pytest.raises(PairError, match="norain-2.png"):
        validate_pairs(find_pairs(tmp_path, validate=False))


# ------------------------------------------------------------------------------------------ Dataset


def test_paired_images_dataset(tmp_path: Path) -> None:
    make_root(tmp_path, ("input", "target"), ["a", "b"], size=(10, 14))
    ds = PairedImages(tmp_path)
    assert len(ds) == 2 and ds.cache
    rainy, clean, name = ds[1]
    assert name == "b" == ds.name(1)
    assert rainy.shape == clean.shape == (3, 10, 14)
    assert rainy.dtype == clean.dtype == torch.float32
    assert 0 <= float(clean.min()) and float(clean.max()) <= 1
    torch.testing.assert_close(rainy, 1 - clean, atol=1e-6, rtol=0)
    expected = np.asarray(Image.open(tmp_path / "target" / "b.png")) / np.float32(255)
    np.testing.assert_array_equal(clean.permute(1, 2, 0).numpy(), expected)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch[0].shape == (2, 3, 10, 14) and list(batch[2]) == ["a", "b"]


# ------------------------------------------------------------------------------------------ sampling


def test_dihedral_eight_distinct_and_invertible() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    outs = [dihedral(x, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    for k, o in enumerate(outs):
        assert torch.equal(dihedral_inverse(o, k), x)
    rect = torch.zeros(1, 1, 2, 5)
    assert dihedral(rect, 1).shape == (1, 1, 5, 2) and dihedral(rect, 4).shape == (1, 1, 2, 5)
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)


def test_sampler_is_a_function_of_seed_and_step(source: ArraySource) -> None:
    a = sample_batch(source, 7, 6, 24, seed=3)
    b = sample_batch(source, 7, 6, 24, seed=3)
    assert a[0].shape == a[1].shape == (6, 3, 24, 24) and a[0].dtype == torch.float32
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], sample_batch(source, 8, 6, 24, seed=3)[0])
    assert not torch.equal(a[0], sample_batch(source, 7, 6, 24, seed=4)[0])
    torch.testing.assert_close(a[0], 1 - a[1])  # rainy and clean patches are aligned
    assert torch.equal(PatchSampler(source, 6, 24, seed=3)(7)[0], a[0])


def test_rank_slices_make_up_the_global_batch(source: ArraySource) -> None:
    full_r, full_c = sample_batch(source, 11, 8, 16, seed=1)
    parts = [sample_batch(source, 11, 8, 16, seed=1, rank=r, world_size=2) for r in range(2)]
    assert parts[0][0].shape == (4, 3, 16, 16)
    assert torch.equal(torch.cat([p[0] for p in parts]), full_r)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_c)
    with pytest.raises(ValueError, match="divisible"):
        sample_batch(source, 0, 7, 16, seed=1, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        sample_batch(source, 0, 8, 16, seed=1, rank=2, world_size=2)


def test_patches_are_crops_under_one_dihedral_transform(rng: np.random.Generator) -> None:
    img = rng.random((20, 30, 3), dtype=np.float32)
    src = ArraySource([img])
    for step in range(6):
        patches = sample_batch(src, step, 3, 9, seed=0)[1]
        found = set()
        for k in range(8):
            back = dihedral_inverse(patches, k).permute(0, 2, 3, 1).numpy()
            if all(_is_crop(p, img) for p in back):
                found.add(k)
        assert found, f"step {step}: patches are not crops of the image under a single dihedral transform"


def _is_crop(patch: np.ndarray, img: np.ndarray) -> bool:
    p = patch.shape[0]
    return any(np.array_equal(img[t:t + p, s:s + p], patch)
               for t in range(img.shape[0] - p + 1) for s in range(img.shape[1] - p + 1))


def test_every_image_once_per_epoch() -> None:
    n = 7
    src = ArraySource([np.full((10, 10, 3), i / 10, np.float32) for i in range(n)])
    for step in range(3):
        clean = sample_batch(src, step, n, 4, seed=5)[1]
        seen = sorted(round(float(v) * 10) for v in clean[:, 0, 0, 0])
        assert seen == list(range(n))


def test_small_images_are_reflect_padded(rng: np.random.Generator) -> None:
    img = rng.random((5, 6, 3), dtype=np.float32)
    padded = np.pad(img, ((0, 3), (0, 2), (0, 0)), mode="reflect")
    patch = sample_batch(ArraySource([img]), 0, 1, 8, seed=0)[1]
    assert patch.shape == (1, 3, 8, 8)
    target = torch.from_numpy(padded).permute(2, 0, 1)[None]
    assert any(torch.equal(dihedral_inverse(patch, k), target) for k in range(8))


def test_sampler_on_paired_images(tmp_path: Path) -> None:
    make_root(tmp_path, ("input", "target"), [str(i) for i in range(4)], size=(20, 24))
    ds = PairedImages(tmp_path)
    rainy, clean = sample_batch(ds, 0, 4, 16, seed=0)
    assert rainy.shape == (4, 3, 16, 16)
    torch.testing.assert_close(rainy, 1 - clean, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ synthetic


@pytest.fixture
def small_photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut()[100:164, 150:230], data.coffee()[50:114, 200:280]]


def test_synth_pairs_deterministic(small_photos: list[np.ndarray], tmp_path: Path) -> None:
    pytest.importorskip("derain.synth")
    src = SynthPairs(small_photos, preset=["light", "heavy"], seed=2)
    assert len(src) == 4
    assert src.name(1) == "0000_heavy" and src.name(2) == "0001_light"
    rainy, clean = src.get_pair(2)
    assert rainy.shape == clean.shape == (64, 80, 3) and rainy.dtype == clean.dtype == np.float32
    np.testing.assert_array_equal(clean, small_photos[1] / np.float32(255))
    assert not np.array_equal(rainy, clean) and 0 <= rainy.min() and rainy.max() <= 1
    again = SynthPairs(small_photos, preset=["light", "heavy"], seed=2, cache=False)
    np.testing.assert_array_equal(again.get_pair(2)[0], rainy)
    assert src.get_pair(2)[0] is rainy  # cached
    other = SynthPairs(small_photos, preset=["light", "heavy"], seed=3)
    assert not np.array_equal(other.get_pair(2)[0], rainy)
    # from a folder, and through the sampler
    for i, img in enumerate(small_photos):
        save_png(tmp_path / f"p{i}.png", img)
    folder = SynthPairs(tmp_path, preset="light", seed=2)
    assert len(folder) == 2 and folder.name(0) == "p0_light"
    np.testing.assert_array_equal(folder.get_pair(1)[0], src.get_pair(2)[0])
    r, c = sample_batch(folder, 0, 2, 32, seed=0)
    assert r.shape == c.shape == (2, 3, 32, 32)
    assert torch.equal(r, sample_batch(folder, 0, 2, 32, seed=0)[0])


def test_synth_pairs_variants_give_different_rain_on_the_same_image() -> None:
    from derain.data import SynthPairs

    img = np.full((40, 48, 3), 0.4, dtype=np.float32)
    one = SynthPairs([img], preset="light", seed=3)
    many = SynthPairs([img], preset="light", seed=3, variants=3)
    assert len(many) == 3 and [many.name(i) for i in range(3)] == ["0000_light", "0000_light_v1", "0000_light_v2"]
    first = many.get_pair(0)[0]
    np.testing.assert_array_equal(first, one.get_pair(0)[0])  # variant 0 is the single-variant rain
    assert not np.array_equal(first, many.get_pair(1)[0])
    assert not np.array_equal(many.get_pair(1)[0], many.get_pair(2)[0])
    np.testing.assert_array_equal(many.get_pair(2)[1], img)


class _StripeSource:
    """One pair whose images are vertical stripes (every row identical)."""

    def __init__(self) -> None:
        row = (np.arange(40) % 5 / 4.0).astype(np.float32)
        self.img = np.repeat(np.repeat(row[None, :, None], 40, axis=0), 3, axis=2)

    def __len__(self) -> int:
        return 1

    def get_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.img, self.img


def _rows_identical(batch: torch.Tensor) -> bool:
    return bool((batch == batch[..., :1, :]).all())


def test_flips_augment_keeps_vertical_structure_but_dihedral_does_not() -> None:
    from derain.data import sample_batch

    src = _StripeSource()
    flips = [sample_batch(src, step, 2, 16, seed=0, augment="flips")[0] for step in range(30)]
    assert all(_rows_identical(b) for b in flips)
    dihedral = [sample_batch(src, step, 2, 16, seed=0)[0] for step in range(30)]
    assert not all(_rows_identical(b) for b in dihedral)
    with pytest.raises(ValueError, match="unknown augment"):
        sample_batch(src, 0, 2, 16, seed=0, augment="rot45")


def test_a_patch_far_larger_than_the_images_is_refused(rng: np.random.Generator) -> None:
    """Reflect padding fills a patch up to twice an image's side; beyond that it would be made up (and a 4096-px patch
    on 96-px images exhausted the memory): refused in one line naming patch_size and the image."""
    img = rng.random((96, 90, 3), dtype=np.float32)
    assert sample_batch(ArraySource([img]), 0, 1, 180, seed=0)[1].shape == (1, 3, 180, 180)
    with pytest.raises(ValueError, match=r"patch_size 4096 is more than twice the side of pair 0 \(96×90\)"):
        sample_batch(ArraySource([img]), 0, 1, 4096, seed=0)
