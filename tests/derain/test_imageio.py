"""derain.imageio.read_image: every common file kind comes back as H×W×3 float32 RGB in [0, 1], values exact."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from derain.imageio import ImageReadError, read_image, read_tensor, write_image


def check_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.shape == (*shape, 3) and arr.dtype == np.float32
    assert arr.min() >= 0.0 and arr.max() <= 1.0


@pytest.fixture
def rgb8(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)


def test_rgb_8bit(tmp_path: Path, rgb8: np.ndarray) -> None:
    Image.fromarray(rgb8).save(tmp_path / "a.png")
    arr = read_image(tmp_path / "a.png")
    check_rgb(arr, (13, 17))
    np.testing.assert_array_equal(arr, rgb8.astype(np.float32) / 255)


def test_grayscale_8bit(tmp_path: Path, rgb8: np.ndarray) -> None:
    Image.fromarray(rgb8[..., 0]).save(tmp_path / "g.png")
    arr = read_image(tmp_path / "g.png")
    check_rgb(arr, (13, 17))
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], rgb8[..., 0] / np.float32(255))


def test_grayscale_16bit_keeps_precision(tmp_path: Path, rng: np.random.Generator) -> None:
    g16 = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "g16.png"), g16)
    arr = read_image(tmp_path / "g16.png")
    check_rgb(arr, (9, 11))
    np.testing.assert_allclose(arr[..., 1], g16 / 65535.0, atol=1e-7)
    # a dark 16-bit image (all values <= 255) is still read as 16-bit, not as 8-bit
    dark = (np.arange(99).reshape(9, 11) * 2).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "dark16.png"), dark)
    np.testing.assert_allclose(read_image(tmp_path / "dark16.png")[..., 0], dark / 65535.0, atol=1e-7)


def test_rgb_16bit_written_by_cv2(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb16 = rng.integers(0, 65536, (8, 10, 3), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # OpenCV stores BGR
    arr = read_image(tmp_path / "c16.png")
    check_rgb(arr, (8, 10))
    np.testing.assert_allclose(arr, rgb16 / 65535.0, atol=1e-7)  # full 16-bit precision, RGB order


def test_rgba_partial_alpha_warns(tmp_path: Path, rgb8: np.ndarray) -> None:
    alpha = np.full(rgb8.shape[:2], 255, np.uint8)
    Image.fromarray(np.dstack([rgb8, alpha])).save(tmp_path / "opaque.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fully opaque: silent
        np.testing.assert_array_equal(read_image(tmp_path / "opaque.png"), rgb8 / np.float32(255))
    alpha[2:5, 3:9] = 40
    Image.fromarray(np.dstack([rgb8, alpha])).save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning, match="rgba.png.*alpha"):
        arr = read_image(tmp_path / "rgba.png")
    check_rgb(arr, (13, 17))
    np.testing.assert_array_equal(arr, rgb8 / np.float32(255))  # colour kept, alpha dropped


def test_rgba_16bit_partial_alpha_warns(tmp_path: Path, rng: np.random.Generator) -> None:
    bgra = rng.integers(0, 65536, (6, 7, 4), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "c16a.png"), bgra)
    with pytest.warns(UserWarning, match="alpha"):
        arr = read_image(tmp_path / "c16a.png")
    np.testing.assert_allclose(arr, bgra[..., 2::-1] / 65535.0, atol=1e-7)


def test_palette_png(tmp_path: Path) -> None:
    palette = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30]], np.uint8)
    idx = np.array([[0, 1, 2, 1], [2, 2, 0, 1]], np.uint8)
    im = Image.frombytes("P", (4, 2), idx.tobytes())
    im.putpalette(palette.flatten().tolist())
    im.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    arr = read_image(tmp_path / "p.png")
    check_rgb(arr, (2, 4))
    np.testing.assert_array_equal(arr, palette[idx] / np.float32(255))


def test_jpeg(tmp_path: Path) -> None:
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 48, dtype=np.uint8)
    smooth[..., 1] = 100
    smooth[..., 2] = np.linspace(255, 0, 32, dtype=np.uint8)[:, None]
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    arr = read_image(tmp_path / "a.jpg")
    check_rgb(arr, (32, 48))
    with Image.open(tmp_path / "a.jpg") as im:
        np.testing.assert_array_equal(arr, np.asarray(im.convert("RGB")) / np.float32(255))
    assert np.abs(arr * 255 - smooth).mean() < 3  # close to what was saved (lossy)
    Image.fromarray(smooth[..., 0]).save(tmp_path / "g.jpg")
    check_rgb(read_image(tmp_path / "g.jpg"), (32, 48))


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image(tmp_path / "junk.png")


def test_unreadable_files_stay_an_image_error_after_ultralytics_patches_pil(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """ultralytics' PIL.Image.open wrapper would try to pip-install a HEIF plugin on an unknown file (and raise
    ImportError offline); our reads bypass it."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    import ultralytics.utils.patches  # noqa: F401  (applies the patch)
    from PIL import Image

    assert Image.open.__module__ == "ultralytics.utils.patches"
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image(tmp_path / "junk.png")


def test_write_roundtrip(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.random((5, 6, 3)).astype(np.float32)
    write_image(tmp_path / "o8.png", arr)
    np.testing.assert_allclose(read_image(tmp_path / "o8.png"), arr, atol=0.5 / 255 + 1e-7)
    write_image(tmp_path / "o16.png", torch.from_numpy(arr).permute(2, 0, 1), bit_depth=16)
    np.testing.assert_allclose(read_image(tmp_path / "o16.png"), arr, atol=0.5 / 65535 + 1e-7)
    t = read_tensor(tmp_path / "o16.png")
    assert t.shape == (3, 5, 6) and t.dtype == torch.float32


def test_decompression_bomb_limit_names_the_file_and_the_way_out(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    write_image(tmp_path / "big.png", np.zeros((30, 30, 3), np.float32))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 900 px > 2 × 100: PIL refuses it as a bomb
    with pytest.raises(ImageReadError, match=r"big.png: .*DERAINBENCH_MAX_PIXELS=<pixels>"):
        read_image(tmp_path / "big.png")


@pytest.mark.parametrize(("orientation", "turn"), [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, turn: int) -> None:
    """A photo tagged 'rotate 90° to display' (6) is read upright, as viewers and label tools show it; its header
    size agrees; the written copy is upright without a tag, so every tool reads it the same way."""
    from PIL import Image

    from derain.imageio import image_size

    raw = np.zeros((6, 10, 3), np.uint8)
    raw[0, :3] = 255  # a mark in the top-left corner, to see where it goes
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(raw).save(tmp_path / "tagged.png", exif=exif)
    upright = np.rot90(raw, turn)
    got = read_image(tmp_path / "tagged.png")
    np.testing.assert_array_equal((got * 255).round().astype(np.uint8), upright)
    assert image_size(tmp_path / "tagged.png") == upright.shape[:2]
    write_image(tmp_path / "copy.png", got)
    with Image.open(tmp_path / "copy.png") as im:
        assert im.getexif().get(0x0112, 1) == 1
    np.testing.assert_array_equal((read_image(tmp_path / "copy.png") * 255).round().astype(np.uint8), upright)


def test_walk_follows_symlinked_folders_and_names_loops(tmp_path: Path) -> None:
    from derain.imageio import walk_files
    from derain.synth import find_images

    root, other = tmp_path / "root", tmp_path / "other"
    write_image(root / "a" / "1.png", np.zeros((8, 8, 3), np.float32))
    write_image(other / "2.png", np.zeros((8, 8, 3), np.float32))
    (root / "linked").symlink_to(other, target_is_directory=True)  # a symlinked folder: followed
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # leads back up: skipped, said
    with pytest.warns(UserWarning, match=r"skipped .*a/loop: a symlink loop"):
        files = walk_files(root)
    assert [f.relative_to(root).as_posix() for f in files] == ["a/1.png", "linked/2.png"]
    with pytest.warns(UserWarning, match="symlink loop"):
        assert [p.as_posix() for p in find_images(root)] == ["a/1.png", "linked/2.png"]


def test_16bit_rgb_png_obeys_the_pixel_limit_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 16-bit colour path (OpenCV) checks the header's size against the same limit as every other image."""
    write_image(tmp_path / "big16.png", np.zeros((30, 30, 3), np.float32), bit_depth=16)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: pytest.fail("decoded before the size check"))
    with pytest.raises(ImageReadError, match=r"big16.png: .*DERAINBENCH_MAX_PIXELS=<pixels>"):
        read_image(tmp_path / "big16.png")


def test_float_tiff_rule(tmp_path: Path) -> None:
    """Mode F (32-bit float, one channel): values within [0, 1] are intensities as they are, values up to 255 are
    8-bit levels (divided by 255); anything else is refused naming the file and the range."""
    levels = np.linspace(7, 228, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(levels, mode="F").save(tmp_path / "levels.tif")
    arr = read_image(tmp_path / "levels.tif")
    check_rgb(arr, (3, 4))
    np.testing.assert_allclose(arr[..., 1], levels / 255.0, rtol=1e-6)
    unit = levels / 255.0
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    np.testing.assert_allclose(read_image(tmp_path / "unit.tif")[..., 0], unit, rtol=1e-6)
    for name, bad in [("neg", -0.5), ("big", 300.0), ("nan", float("nan"))]:
        values = unit.copy()
        values[1, 2] = bad
        Image.fromarray(values, mode="F").save(tmp_path / f"{name}.tif")
        with pytest.raises(ImageReadError, match=rf"{name}\.tif: 32-bit float image .* outside \[0, 255\]"):
            read_image(tmp_path / f"{name}.tif")


def _two_link_levels(root: Path, depth: int) -> None:
    """``root/a`` and ``root/b`` both lead to level 1, whose ``a`` and ``b`` lead to level 2, ...: 2**depth paths to
    the last level's file, no loop (issue 27 item 17)."""
    levels = [root.parent / f"level{i}" for i in range(depth + 1)]
    for level in levels:
        level.mkdir()
    (levels[-1] / "x.png").write_bytes(b"")
    for here, below in zip([root, *levels[1:-1]], levels[1:], strict=True):
        for name in "ab":
            (here / name).symlink_to(below, target_is_directory=True)


def test_walk_visits_a_folder_reached_through_several_symlinks_once(tmp_path: Path) -> None:
    """A folder reached again through another symlink is not walked again (said once per skip): 22 levels of two
    links took 2**22 visits; here 12 levels (4096 paths) must give one file and 12 warnings."""
    import time

    from derain.imageio import walk_files

    root = tmp_path / "level0"
    _two_link_levels(root, 12)
    start = time.perf_counter()
    with pytest.warns(UserWarning, match=r"skipped .*/b: the folder .*level\d+ was already walked as .*/a") as seen:
        files = walk_files(root)
    assert time.perf_counter() - start < 5
    assert [f.relative_to(root).as_posix() for f in files] == ["/".join("a" * 12) + "/x.png"]
    assert len([w for w in seen if "already walked" in str(w.message)]) == 12


def test_walk_stops_at_its_entry_limit_naming_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import derain.imageio as imageio

    for i in range(5):
        (tmp_path / "d" / str(i)).mkdir(parents=True)
        (tmp_path / "d" / str(i) / "f.png").write_bytes(b"")
    monkeypatch.setattr(imageio, "MAX_WALK_ENTRIES", 6)
    with pytest.raises(ValueError, match=r"d holds more than 6 files and folders.*DERAINBENCH_MAX_WALK"):
        imageio.walk_files(tmp_path / "d")
    monkeypatch.setattr(imageio, "MAX_WALK_ENTRIES", 10)
    assert len(imageio.walk_files(tmp_path / "d")) == 5
