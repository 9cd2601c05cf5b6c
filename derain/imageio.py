"""The one image I/O helper: read any common image file as RGB float, write uint8/16-bit PNG.

Reads 8/16-bit, grayscale, RGBA, palette PNG and JPEG; warns where information is dropped (alpha). One-channel
32-bit float images (PIL mode F, e.g. float TIFF) follow one rule: values within [0, 1] are intensities as they
are, values within [0, 255] (some above 1) are 8-bit levels and divided by 255, anything else (negative, above
255, NaN/inf) is refused naming the file and the range. Every file's size is checked against the pixel limit
(``DERAINBENCH_MAX_PIXELS``) from its header, before any decoder runs.
Arrays are ``H×W×3`` float32 in [0, 1]; tensors are ``3×H×W`` / ``B×3×H×W`` float in [0, 1].
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from derain.fileio import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(OSError):
    """An image file that is missing, unreadable or of an unsupported kind; the message names the file."""


def is_image_file(path: str | Path) -> bool:
    """True for file names with a known image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


MAX_WALK_ENTRIES = int(os.environ.get("DERAINBENCH_MAX_WALK", "") or 10_000_000)  # files + folders one walk visits


def walk_files(root: str | Path) -> list[Path]:
    """Every file below ``root``, sorted, following symlinked folders, each real folder walked once: a symlink that
    leads to a folder already walked (a loop, or a second way to the same folder) is skipped with a warning naming
    both paths, never silently, so its files are listed once, under the first path (sorted order). A walk that meets
    more than :data:`MAX_WALK_ENTRIES` files and folders (10 million; the environment variable DERAINBENCH_MAX_WALK
    changes it) stops with a ValueError naming ``root``: a folder of symlinks can otherwise name 2^n paths."""
    root = Path(root)
    out: list[Path] = []
    walked: dict[str, Path] = {os.path.realpath(root): root}  # real folder -> the path it was walked as
    stack = [root]
    seen = 0
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            warnings.warn(f"cannot list {folder}: {exc}; its files are not used", stacklevel=2)
            continue
        seen += len(entries)
        if seen > MAX_WALK_ENTRIES:
            raise ValueError(f"{root} holds more than {MAX_WALK_ENTRIES} files and folders (symlinks included): "
                             "point at a smaller folder, or raise the limit with the environment variable "
                             "DERAINBENCH_MAX_WALK")
        subfolders = []
        for entry in entries:
            if entry.is_dir():
                real = os.path.realpath(entry)
                if real in walked:
                    first = walked[real]
                    if entry.is_relative_to(first):  # it leads back into the folder it lies in
                        warnings.warn(f"skipped {entry}: a symlink loop (it leads back to {real})", stacklevel=2)
                    else:
                        warnings.warn(f"skipped {entry}: the folder {real} was already walked as {first}",
                                      stacklevel=2)
                    continue
                walked[real] = entry
                subfolders.append(entry)
            elif entry.is_file():
                out.append(entry)
        stack.extend(reversed(subfolders))
    return sorted(out)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; a missing folder is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


MAX_PIXELS_ENV = "DERAINBENCH_MAX_PIXELS"  # raises PIL's decompression-bomb limit (178,956,970 pixels)
if os.environ.get(MAX_PIXELS_ENV, "").strip().isdigit():
    Image.MAX_IMAGE_PIXELS = int(os.environ[MAX_PIXELS_ENV])


def open_image(path: str | Path) -> Image.Image:
    """PIL's own ``Image.open``. Importing ultralytics replaces ``PIL.Image.open`` with a wrapper that, on a file PIL
    cannot identify, tries to pip-install a HEIF plugin (a network access, and an ImportError offline) instead of
    raising ``UnidentifiedImageError``; every image this project reads goes through here instead."""
    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", Image.open)(path)


_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the picture by 90° (width and height trade places)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(h, w)`` of the image as :func:`read_image` returns it, from the header only (EXIF orientation applied)."""
    with open_image(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (int(w), int(h)) if orientation in _SWAPS_SIDES else (int(h), int(w))


def read_image(path: str | Path) -> np.ndarray:
    """Read ``path`` as ``H×W×3`` float32 RGB in [0, 1], upright (an EXIF orientation tag is applied, as image
    viewers and label tools do; written outputs carry no tag, so every tool reads them the same way).

    16-bit files keep their precision; grayscale is replicated to 3 channels; palette images are expanded;
    an alpha channel that is not fully opaque is dropped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    try:
        with open_image(path) as im:  # opening reads the header only and applies the pixel limit (PIL's bomb check)
            if _is_16bit_colour_png(path):
                return _read_png16_colour(path)
            im.load()
            return _to_rgb_float(ImageOps.exif_transpose(im), path)  # upright, as viewers show it
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"{path}: {exc}. If you trust this file, allow more pixels with the environment variable "
            f"{MAX_PIXELS_ENV}=<pixels> (and use --tile for very large images)"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def _to_rgb_float(im: Image.Image, path: Path) -> np.ndarray:
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float32)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = arr / peak
        return np.repeat(gray[..., None], 3, axis=2).clip(0, 1)
    if mode == "F":  # the rule in the module docstring
        gray = np.asarray(im).astype(np.float32)
        lo, hi = (float(gray.min()), float(gray.max())) if gray.size else (0.0, 0.0)
        if not (np.isfinite(gray).all() and 0.0 <= lo and hi <= 255.0):
            raise ImageReadError(f"{path}: 32-bit float image with values {lo:g}..{hi:g} outside [0, 255] (float "
                                 "images are read as intensities in [0, 1] or 8-bit levels in [0, 255])")
        return np.repeat((gray / 255.0 if hi > 1.0 else gray)[..., None], 3, axis=2)
    if mode in ("1", "L"):
        gray = np.asarray(im.convert("L")).astype(np.float32) / 255.0
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "LA":
        arr = np.asarray(im)
        _warn_alpha(arr[..., 1], path, 255)
        gray = arr[..., 0].astype(np.float32) / 255.0
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "RGBA":
        arr = np.asarray(im)
        _warn_alpha(arr[..., 3], path, 255)
        return arr[..., :3].astype(np.float32) / 255.0
    if mode == "RGB":
        return np.asarray(im).astype(np.float32) / 255.0
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(im.convert("RGB")).astype(np.float32) / 255.0
    raise ImageReadError(f"unsupported image mode {mode!r} in {path}")


def _warn_alpha(alpha: np.ndarray, path: Path, opaque: int) -> None:
    if (alpha != opaque).any():
        warnings.warn(f"{path}: dropping a non-opaque alpha channel (image converted to RGB)", stacklevel=3)


def write_image(path: str | Path, image: np.ndarray | torch.Tensor, bit_depth: int = 8) -> None:
    """Write ``H×W×3`` array or ``3×H×W`` tensor (float in [0, 1]) as an image, atomically.

    Values are clipped to [0, 1] and rounded to ``bit_depth`` (8, or 16 for PNG).
    """
    path = Path(path)
    arr = to_numpy_image(image)
    with atomic_path(path) as tmp:
        if bit_depth == 16:
            if path.suffix.lower() != ".png":
                raise ValueError(f"16-bit output needs a .png file name, got {path}")
            _write_png16(tmp, arr)
        elif bit_depth == 8:
            Image.fromarray(quantize_uint8(arr)).save(tmp)
        else:
            raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")


def write_mask(path: str | Path, mask: np.ndarray | torch.Tensor) -> None:
    """Write an ``H×W`` map of integer ids in 0..255 (class ids, 255 = ignore) as a single-channel PNG, atomically."""
    arr = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if arr.ndim != 2 or (arr.size and (arr.min() < 0 or arr.max() > 255)):
        raise ValueError(f"a mask is H×W of ids in 0..255, got shape {arr.shape}, range "
                         f"{(arr.min(), arr.max()) if arr.size else ()}")
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(arr.astype(np.uint8)).save(tmp, format="PNG")


def quantize_uint8(arr: np.ndarray) -> np.ndarray:
    """Float in [0, 1] -> uint8 with rounding (the quantization every saved PNG goes through)."""
    return np.clip(np.rint(np.clip(arr, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)


def to_numpy_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """``3×H×W`` tensor or ``H×W×3`` array -> ``H×W×3`` float32 numpy array."""
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"expected a 3×H×W tensor, got shape {tuple(t.shape)}")
        return t.permute(1, 2, 0).numpy()
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 array, got shape {arr.shape}")
    return arr


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``H×W×3`` float array -> ``3×H×W`` float32 tensor (contiguous copy)."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()


def read_tensor(path: str | Path) -> torch.Tensor:
    """Read ``path`` as a ``3×H×W`` float32 tensor in [0, 1]."""
    return to_tensor(read_image(path))


def _is_16bit_colour_png(path: Path) -> bool:
    """PNG header says 16 bits per sample and a colour type with RGB (Pillow would truncate those to 8 bits)."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


def _read_png16_colour(path: Path) -> np.ndarray:
    """16-bit RGB(A) PNG via OpenCV, keeping full precision."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(f"cannot read image {path}: OpenCV could not decode it")
    if arr.ndim == 3 and arr.shape[2] == 4:
        _warn_alpha(arr[..., 3], path, 65535)
        arr = arr[..., :3]
    return (arr[..., ::-1].astype(np.float32) / 65535.0).copy()


def _write_png16(path: Path, arr: np.ndarray) -> None:
    """16-bit RGB PNG via OpenCV when present (Pillow cannot write 48-bit RGB)."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv comes with ultralytics
        raise RuntimeError("writing 16-bit RGB PNG needs opencv-python (pip install opencv-python)") from exc
    u16 = np.clip(np.rint(np.clip(arr, 0, 1) * 65535.0), 0, 65535).astype(np.uint16)
    if not cv2.imwrite(str(path), u16[..., ::-1]):
        raise OSError(f"cannot write {path}")
