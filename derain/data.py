"""Paired rainy/clean data: pair discovery, a torch Dataset, on-the-fly synthetic pairs, patch batches.

Pair sources (:class:`PairedImages`, :class:`SynthPairs`) share one tiny interface, ``len(source)`` and
``source.get_pair(i) -> (rainy, clean)`` (``H×W×3`` float32 numpy arrays in [0, 1]), which is all
:func:`sample_batch` needs. Batches are a pure function of ``(seed, step)`` so a resumed run draws exactly
the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import functools
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from derain.imageio import ImageReadError, image_size, list_images, read_image, to_tensor

__all__ = [
    "LAYOUTS",
    "MANY_TO_ONE_LAYOUTS",
    "Pair",
    "PairError",
    "PairSource",
    "PairedImages",
    "PatchSampler",
    "SubsetSource",
    "SynthPairs",
    "dihedral",
    "dihedral_inverse",
    "find_pairs",
    "holdout_split",
    "natural_key",
    "pairs_flat",
    "pairs_from_dirs",
    "sample_batch",
    "validate_pairs",
]

# (rainy folder, clean folder) of the paired layouts in common use (DESIGN.md §3): one rainy image per clean one.
LAYOUTS: tuple[tuple[str, str], ...] = (("rain", "norain"), ("input", "target"), ("rainy", "gt"))
# Several rainy images per clean one: Rain14000 / Rain12600 (Fu et al.), rainy_image/i_j.jpg <-> ground_truth/i.jpg.
MANY_TO_ONE_LAYOUTS: tuple[tuple[str, str], ...] = (("rainy_image", "ground_truth"),)
# File-name prefixes stripped before matching (Rain100L/H: rain-001.png <-> norain-001.png). In one flat folder
# (PReNet's RainTrainH/L and test sets: rain-N.png beside norain-N.png) they tell rainy from clean.
_NAME_PREFIXES = ("norain-", "rain-")
_FLAT_RAINY, _FLAT_CLEAN = "rain-", "norain-"
# PairedImages(cache="auto") keeps decoded images in memory when they need less than this (float32).
CACHE_AUTO_BYTES = 2 << 30
_MAX_LISTED = 10


class PairError(ValueError):
    """Unmatched, mismatched or unreadable pairs; the message names the file(s)."""


@dataclass(frozen=True)
class Pair:
    """One rainy/clean pair; ``name`` is the shared file stem (without a ``rain-``/``norain-`` prefix)."""

    rainy: Path
    clean: Path
    name: str


class PairSource(Protocol):
    """What :func:`sample_batch` and validation loops need from a source of pairs."""

    def __len__(self) -> int: ...

    def get_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


def natural_key(text: str) -> list[Any]:
    """Sort key that orders digit runs by value ("2" before "10"), case-insensitively otherwise."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


# ------------------------------------------------------------------------------------------ pair discovery


def find_pairs(root: str | Path, skip_bad: bool = False, validate: bool = True) -> list[Pair]:
    """Pairs under ``root`` in a layout the field uses, naturally sorted by name:

    - two folders with the same names: ``rain/``+``norain/`` (Rain100L/H), ``input/``+``target/`` (Rain13K,
      Test1200/2800), ``rainy/``+``gt/``;
    - several rainy images per clean one: ``rainy_image/i_j.jpg`` ↔ ``ground_truth/i.jpg`` (Rain14000, Rain12600);
    - one flat folder of ``rain-N.png`` beside ``norain-N.png`` (PReNet's RainTrainH/L and test folders).

    Unmatched, size-mismatched (PIL header check when ``validate``) or unreadable files raise
    :class:`PairError` naming them; ``skip_bad=True`` drops them instead and warns with the count. A folder that
    matches no layout is an error listing what it holds.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"paired data folder not found: {root}")
    found = [(r, c) for r, c in (*LAYOUTS, *MANY_TO_ONE_LAYOUTS) if (root / r).is_dir() and (root / c).is_dir()]
    if not found:
        rainy_files, clean_files, others = _split_flat(list_images(root))
        if rainy_files and clean_files:
            return pairs_flat(root, skip_bad=skip_bad, validate=validate)
        flat = (len(rainy_files), len(clean_files), len(others))
        raise PairError(f"{root}: no known paired layout; {_describe_folder(root, flat)}. Looked for "
                        + ", ".join(f"{r}/ + {c}/" for r, c in (*LAYOUTS, *MANY_TO_ONE_LAYOUTS))
                        + f", or {_FLAT_RAINY}N + {_FLAT_CLEAN}N images side by side (pass the two folders "
                        "explicitly with rainy=/clean= otherwise)")
    if len(found) > 1:
        both = " and ".join(f"{r}/ + {c}/" for r, c in found)
        raise PairError(f"{root}: ambiguous layout, found {both}; pass the folders explicitly (pairs_from_dirs)")
    rainy, clean = found[0]
    return pairs_from_dirs(root / rainy, root / clean, skip_bad=skip_bad, validate=validate,
                           many_to_one=(rainy, clean) in MANY_TO_ONE_LAYOUTS)


def pairs_from_dirs(
    rainy_dir: str | Path, clean_dir: str | Path, skip_bad: bool = False, validate: bool = True,
    sides: tuple[str, str] = ("rainy", "clean"), many_to_one: bool = False,
) -> list[Pair]:
    """Pair the images of two folders by file stem (same names, or same stems with other extensions).

    A ``rain-``/``norain-`` prefix shared by every file of a folder is ignored, so ``rain-001.png`` pairs with
    ``norain-001.png``. ``many_to_one``: rainy stems are ``<clean stem>_<k>`` (Rain14000's ``12_3.jpg`` is the
    third rainy version of ``12.jpg``); each rainy image is a pair named by its own stem. Errors and
    ``skip_bad`` as in :func:`find_pairs`; ``sides`` names the two folders in messages (e.g. ``("pred", "gt")``).
    """
    return _pair_files(list_images(rainy_dir), list_images(clean_dir), skip_bad, validate, sides, many_to_one,
                       where=(str(rainy_dir), str(clean_dir)))


def pairs_flat(root: str | Path, skip_bad: bool = False, validate: bool = True) -> list[Pair]:
    """Pairs of ``rain-N.*`` and ``norain-N.*`` images in one folder (PReNet's layout); other images in the
    folder are errors (``skip_bad`` skips them with a warning)."""
    rainy, clean, others = _split_flat(list_images(root))
    problems = [f"{f}: neither {_FLAT_RAINY}* nor {_FLAT_CLEAN}* in a flat paired folder" for f in others]
    _report(problems, skip_bad, f"reading the flat paired folder {root}")
    return _pair_files(rainy, clean, skip_bad, validate, ("rainy", "clean"), False, where=(str(root), str(root)))


def _pair_files(rainy_files: list[Path], clean_files: list[Path], skip_bad: bool, validate: bool,
                sides: tuple[str, str], many_to_one: bool, where: tuple[str, str]) -> list[Pair]:
    rainy_dir, clean_dir = where
    problems: list[str] = []
    rainy_keys = _keyed(rainy_files, problems)
    clean_keys = _keyed(clean_files, problems)
    if many_to_one:
        groups: dict[str, list[str]] = {}
        for name, path in rainy_keys.items():
            base, sep, k = name.rpartition("_")
            if not sep or not base or not k:
                problems.append(f"{path}: a rainy image here must be named <clean name>_<k> (e.g. 12_3.jpg)")
                continue
            groups.setdefault(base, []).append(name)
        matched = sorted(groups.keys() & clean_keys.keys(), key=natural_key)
        for base in sorted(groups.keys() - clean_keys.keys(), key=natural_key):
            problems += [f"{rainy_keys[n]}: no {sides[1]} image {base}.* in {clean_dir}" for n in groups[base]]
        for key in sorted(clean_keys.keys() - groups.keys(), key=natural_key):
            problems.append(f"{clean_keys[key]}: no {sides[0]} image {key}_<k>.* matches it in {rainy_dir}")
        pairs = [Pair(rainy_keys[n], clean_keys[base], n) for base in matched
                 for n in sorted(groups[base], key=natural_key)]
    else:
        for key in sorted(rainy_keys.keys() - clean_keys.keys(), key=natural_key):
            problems.append(f"{rainy_keys[key]}: no {sides[1]} image matches it in {clean_dir}")
        for key in sorted(clean_keys.keys() - rainy_keys.keys(), key=natural_key):
            problems.append(f"{clean_keys[key]}: no {sides[0]} image matches it in {rainy_dir}")
        pairs = [Pair(rainy_keys[k], clean_keys[k], k)
                 for k in sorted(rainy_keys.keys() & clean_keys.keys(), key=natural_key)]
    _report(problems, skip_bad, f"pairing {rainy_dir} with {clean_dir}")
    if not pairs:
        raise PairError(f"no image pairs found in {rainy_dir} and {clean_dir}")
    if validate:
        pairs = validate_pairs(pairs, skip_bad=skip_bad)
        if not pairs:
            raise PairError(f"no usable image pairs in {rainy_dir} and {clean_dir} (all skipped)")
    return pairs


def _split_flat(files: list[Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """``(rain-* images, norain-* images, other images)`` of one folder's listing."""
    rainy, clean, others = [], [], []
    for f in files:
        (rainy if f.stem.startswith(_FLAT_RAINY) else clean if f.stem.startswith(_FLAT_CLEAN) else others).append(f)
    return rainy, clean, others


def _describe_folder(root: Path, flat: tuple[int, int, int]) -> str:
    """What ``root`` holds, for the no-layout error: its sub-folders and its images by name prefix."""
    dirs = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())
    shown = ", ".join(dirs[:_MAX_LISTED]) + (" ..." if len(dirs) > _MAX_LISTED else "")
    rainy, clean, other = flat
    return (f"found {len(dirs)} folder(s){': ' + shown if dirs else ''} and {rainy + clean + other} image(s) "
            f"({rainy} named {_FLAT_RAINY}*, {clean} named {_FLAT_CLEAN}*, {other} other)")


def validate_pairs(pairs: Sequence[Pair], skip_bad: bool = False) -> list[Pair]:
    """Check every pair is readable and has equal sizes from the image headers only (fast, PIL lazy open)."""
    good, problems = [], []
    for pair in pairs:
        try:
            sizes = [_header_size(pair.rainy), _header_size(pair.clean)]
        except PairError as exc:
            problems.append(str(exc))
            continue
        if sizes[0] != sizes[1]:
            problems.append(_mismatch_message(pair, sizes[0], sizes[1]))
            continue
        good.append(pair)
    _report(problems, skip_bad, "checking pairs")
    return good


def _keyed(files: list[Path], problems: list[str]) -> dict[str, Path]:
    """``{stem without a folder-wide rain-/norain- prefix: file}``; duplicate stems go to ``problems``."""
    stems = [f.stem for f in files]
    prefix = next((p for p in _NAME_PREFIXES if stems and all(s.startswith(p) for s in stems)), "")
    out: dict[str, Path] = {}
    dup: set[str] = set()
    for f, stem in zip(files, stems, strict=True):
        key = stem[len(prefix):]
        if key in out:
            problems.append(f"{out[key]} and {f}: two images with the same name stem")
            dup.add(key)
        out[key] = f
    for key in dup:
        del out[key]
    return out


def _header_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the header; unreadable files raise PairError naming the file."""
    try:
        h, w = image_size(path)  # EXIF orientation applied, as read_image does
        return w, h
    except (OSError, SyntaxError, ValueError) as exc:
        raise PairError(f"{path}: unreadable image ({exc})") from exc


def _mismatch_message(pair: Pair, rainy_size: tuple[int, ...], clean_size: tuple[int, ...]) -> str:
    """Sizes are ``(width, height)``."""
    rw, rh = rainy_size
    cw, ch = clean_size
    return f"size mismatch: {pair.rainy} is {rw}×{rh} but {pair.clean} is {cw}×{ch} (W×H)"


def _report(problems: list[str], skip_bad: bool, what: str) -> None:
    """Raise a PairError listing ``problems``, or (``skip_bad``) warn with their count; never silent."""
    if not problems:
        return
    listed = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    if not skip_bad:
        raise PairError(f"{len(problems)} bad pair(s) while {what}:\n  {listed}{more}\n"
                        "(to skip them and go on: skip_bad: true in a config, --skip-bad on the command line, "
                        "skip_bad=True in Python)")
    warnings.warn(f"skipped {len(problems)} bad pair(s) while {what}:\n  {listed}{more}", stacklevel=3)


# ------------------------------------------------------------------------------------------ pair sources


class PairedImages(torch.utils.data.Dataset):
    """Pairs read from disk: ``ds[i] -> (rainy, clean, name)`` with ``3×H×W`` float32 tensors in [0, 1].

    ``pairs`` is a list of :class:`Pair` or a paired root for :func:`find_pairs`. ``cache=True`` keeps decoded
    images in memory; ``"auto"`` does so when they fit in :data:`CACHE_AUTO_BYTES` (judged from headers).
    Cached arrays are shared, not copied: treat what ``get_pair`` returns as read-only.
    """

    def __init__(self, pairs: Sequence[Pair] | str | Path, cache: bool | Literal["auto"] = "auto",
                 skip_bad: bool = False) -> None:
        self.pairs = find_pairs(pairs, skip_bad=skip_bad) if isinstance(pairs, (str, Path)) else list(pairs)
        if cache == "auto":
            cache = self._decoded_bytes() <= CACHE_AUTO_BYTES
        self.cache = bool(cache)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        rainy, clean = self.get_pair(index)
        return to_tensor(rainy), to_tensor(clean), self.pairs[index].name

    def name(self, index: int) -> str:
        """The pair's name (shared file stem)."""
        return self.pairs[index].name

    def group(self, index: int) -> str:
        """Pairs with the same clean image share a group (Rain14000: the 14 rain versions of one photo)."""
        return str(self.pairs[index].clean)

    def get_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rainy, clean)`` as ``H×W×3`` float32 arrays in [0, 1]; a size mismatch names both files."""
        if index in self._cache:
            return self._cache[index]
        pair = self.pairs[index]
        rainy, clean = _read(pair.rainy), _read(pair.clean)
        if rainy.shape != clean.shape:
            raise PairError(_mismatch_message(pair, rainy.shape[1::-1], clean.shape[1::-1]))
        if self.cache:
            self._cache[index] = (rainy, clean)
        return rainy, clean

    def _decoded_bytes(self) -> int:
        total = 0
        for pair in self.pairs:
            w, h = _header_size(pair.rainy)
            total += 2 * w * h * 3 * 4
            if total > CACHE_AUTO_BYTES:
                break
        return total


class SynthPairs:
    """Rain synthesized on the fly over clean images, so training works from any folder of clean photos.

    ``clean`` is a folder, a list of image paths, or a list of ``H×W×3`` arrays (float in [0, 1] or uint8).
    Every image appears once per preset and rain variant: index ``i`` is image ``i // (P·V)``, preset
    ``presets[(i // V) % P]`` and variant ``i % V``. Its rain is seeded from ``(seed, image index, preset name,
    variant)``, so it never changes (nor depends on the other presets listed); ``variants > 1`` gives each
    image several different rain patterns (more variety for training on few photos). Results are cached
    (``cache=True``): synthesis costs more than reading.
    """

    def __init__(self, clean: str | Path | Sequence[str | Path | np.ndarray],
                 preset: str | Sequence[str] = "light", seed: int = 0, cache: bool = True,
                 variants: int = 1) -> None:
        if isinstance(clean, (str, Path)):
            items: list[Any] = sorted(list_images(clean), key=lambda p: natural_key(p.name))
            if not items:
                raise FileNotFoundError(f"no images in {clean}")
        else:
            items = list(clean)
        if not items:
            raise ValueError("SynthPairs needs at least one clean image")
        self.images = items
        self.presets = [preset] if isinstance(preset, str) else list(preset)
        if not self.presets:
            raise ValueError("SynthPairs needs at least one preset")
        if variants < 1:
            raise ValueError(f"variants must be >= 1, got {variants}")
        self.seed = seed
        self.cache = cache
        self.variants = variants
        self._clean: dict[int, np.ndarray] = {}
        self._rainy: dict[int, np.ndarray] = {}
        self.infos: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.images) * len(self.presets) * self.variants

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        rainy, clean = self.get_pair(index)
        return to_tensor(rainy), to_tensor(clean), self.name(index)

    def _split(self, index: int) -> tuple[int, int, int]:
        """Index -> (image index, preset index, variant)."""
        image_index, rest = divmod(index, len(self.presets) * self.variants)
        preset, variant = divmod(rest, self.variants)
        return image_index, preset, variant

    def name(self, index: int) -> str:
        """``<image stem or index>_<preset>`` (plus ``_v<variant>`` for variants after the first)."""
        image_index, preset, variant = self._split(index)
        item = self.images[image_index]
        stem = Path(item).stem if isinstance(item, (str, Path)) else f"{image_index:04d}"
        return f"{stem}_{self.presets[preset]}" + (f"_v{variant}" if variant else "")

    def group(self, index: int) -> str:
        """Every preset and variant of one clean image share a group."""
        return str(self._split(index)[0])

    def get_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rainy, clean)`` ``H×W×3`` float32 arrays in [0, 1], deterministic for ``(seed, index)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} synthetic pairs")
        image_index, preset, variant = self._split(index)
        if index in self._rainy:
            return self._rainy[index], self._clean_image(image_index)
        from derain.synth import synthesize

        clean = self._clean_image(image_index)
        name = self.presets[preset]
        parts = (self.seed, image_index, zlib.crc32(name.encode())) + ((variant,) if variant else ())
        rainy, info = synthesize(clean, name, seed=derive_seed(*parts))
        rainy = np.ascontiguousarray(rainy, dtype=np.float32)
        if self.cache:
            self._rainy[index] = rainy
            self.infos[index] = info
        return rainy, clean

    def _clean_image(self, i: int) -> np.ndarray:
        if i in self._clean:
            return self._clean[i]
        item = self.images[i]
        img = _read(Path(item)) if isinstance(item, (str, Path)) else _as_float_image(item)
        if self.cache:
            self._clean[i] = img
        return img


class SubsetSource:
    """The pairs ``indices`` of ``source`` (same interface: ``len``, ``get_pair``, ``name``, ``group``)."""

    def __init__(self, source: PairSource, indices: Sequence[int]) -> None:
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def get_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.source.get_pair(self.indices[index])

    def name(self, index: int) -> str:
        inner = getattr(self.source, "name", None)
        return inner(self.indices[index]) if inner else str(self.indices[index])

    def group(self, index: int) -> str:
        return _group(self.source, self.indices[index])


def holdout_split(source: PairSource, count: int, seed: int) -> tuple[SubsetSource, SubsetSource]:
    """``(train, held_out)``: at least ``count`` pairs held out for validation, whole groups at a time (pairs
    sharing a clean image never straddle the split), chosen in a seeded random order so they spread over the set.
    """
    n = len(source)
    groups: dict[str, list[int]] = {}
    for i in range(n):
        groups.setdefault(_group(source, i), []).append(i)
    if not 0 < count < n or len(groups) < 2:
        raise ValueError(f"cannot hold out {count} of {n} pairs ({len(groups)} clean image(s)) for validation: "
                         "need 0 < count < pairs and at least 2 clean images")
    order = list(groups)
    g = torch.Generator().manual_seed(derive_seed(seed, 3))
    held: list[int] = []
    for k in torch.randperm(len(order), generator=g).tolist():
        if len(held) >= count:
            break
        held += groups[order[k]]
    if len(held) >= n:
        raise ValueError(f"holding out {count} pairs leaves none to train on (groups of shared clean images)")
    held_set = set(held)
    return SubsetSource(source, [i for i in range(n) if i not in held_set]), SubsetSource(source, sorted(held))


def _group(source: PairSource, index: int) -> str:
    group = getattr(source, "group", None)
    return group(index) if group else str(index)


def _read(path: Path) -> np.ndarray:
    try:
        return read_image(path)
    except ImageReadError as exc:
        raise PairError(str(exc)) from exc


def _as_float_image(arr: np.ndarray) -> np.ndarray:
    """``H×W×3`` uint8 or float array -> float32 copy in [0, 1]."""
    a = np.asarray(arr)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {a.shape}")
    out = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------------------ patch batches


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 rot90/flip transforms of the last two dims (``B×C×H×W``): rotate ``k % 4`` quarter
    turns, then flip left-right when ``k >= 4``."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral index must be in 0..7, got {k}")
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` ``k``."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral index must be in 0..7, got {k}")
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


AUGMENTS: dict[str, tuple[int, ...]] = {
    "dihedral": tuple(range(8)),  # the MSPFN paper's: any rot90/flip
    "flips": (0, 2, 4, 6),  # identity, rot180, left-right and up-down flips: rain stays near-vertical
    "none": (0,),
}


def sample_batch(
    source: PairSource, step: int, batch_size: int, patch_size: int, seed: int,
    rank: int = 0, world_size: int = 1, augment: str = "dihedral",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned random patches ``(rainy, clean)``, each ``(batch_size // world_size)×3×p×p`` float32 in [0, 1].

    Fully determined by ``(seed, step)``: ``batch_size`` is the *global* batch; its items are the global
    samples ``step·batch_size + j``, taken in a seeded random permutation per epoch (every image once per
    ``len(source)`` samples); each item gets a uniform crop position; ONE random dihedral transform
    (MSPFN's augmentation) is applied to the whole batch. Rank ``r`` of ``world_size`` returns items
    ``[r·b, (r+1)·b)`` with ``b = batch_size // world_size``, so concatenating the ranks gives the
    single-process batch. Images smaller than the patch are reflect-padded at the bottom/right, up to twice their
    sides (a larger patch is refused naming ``patch_size``: it would be mostly made up, and memory goes with it).
    """
    n = len(source)
    _check_batch_args(n, step, batch_size, patch_size, rank, world_size)
    g = torch.Generator().manual_seed(derive_seed(seed, step, 1))
    pos = torch.rand(batch_size, 2, generator=g, dtype=torch.float64).tolist()
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; choose one of {', '.join(AUGMENTS)}")
    choices = AUGMENTS[augment]
    k = choices[int(torch.randint(len(choices), (1,), generator=g))]
    local = batch_size // world_size
    rainy, clean = [], []
    for j in range(rank * local, (rank + 1) * local):
        sample = step * batch_size + j
        index = epoch_permutation(seed, n, sample // n)[sample % n]
        r, c = source.get_pair(index)
        if r.shape != c.shape:
            raise PairError(f"pair {index} has different sizes: rainy {r.shape} vs clean {c.shape}")
        if patch_size > 2 * min(r.shape[:2]):
            raise ValueError(f"patch_size {patch_size} is more than twice the side of pair {index} "
                             f"({r.shape[0]}×{r.shape[1]}): reflect padding would invent most of each patch; use a "
                             f"patch_size of at most {2 * min(r.shape[:2])}")
        r, c = _pad_to(r, patch_size), _pad_to(c, patch_size)
        top = min(int(pos[j][0] * (r.shape[0] - patch_size + 1)), r.shape[0] - patch_size)
        left = min(int(pos[j][1] * (r.shape[1] - patch_size + 1)), r.shape[1] - patch_size)
        rainy.append(to_tensor(r[top:top + patch_size, left:left + patch_size]))
        clean.append(to_tensor(c[top:top + patch_size, left:left + patch_size]))
    return dihedral(torch.stack(rainy), k), dihedral(torch.stack(clean), k)


class PatchSampler:
    """:func:`sample_batch` with its settings bound: ``sampler(step) -> (rainy, clean)``."""

    def __init__(self, source: PairSource, batch_size: int, patch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        _check_batch_args(len(source), 0, batch_size, patch_size, rank, world_size)
        self.source, self.batch_size, self.patch_size = source, batch_size, patch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_batch(self.source, step, self.batch_size, self.patch_size, self.seed,
                            self.rank, self.world_size)


def _check_batch_args(n: int, step: int, batch_size: int, patch_size: int, rank: int, world_size: int) -> None:
    if n <= 0:
        raise ValueError("the pair source is empty")
    if step < 0 or batch_size <= 0 or patch_size <= 0:
        raise ValueError(f"need step >= 0, batch_size > 0, patch_size > 0; got {step}, {batch_size}, {patch_size}")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if batch_size % world_size:
        raise ValueError(f"global batch_size {batch_size} is not divisible by world_size {world_size}")


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (negative ones wrap), via numpy's SeedSequence."""
    state = np.random.SeedSequence([p % (1 << 64) for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@functools.lru_cache(maxsize=8)
def epoch_permutation(seed: int, n: int, epoch: int) -> tuple[int, ...]:
    """The order of ``n`` items in epoch ``epoch`` of a run seeded ``seed``: the same on every rank and every resume
    (training and joint fine-tuning draw their images through it)."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, 2))
    return tuple(torch.randperm(n, generator=g).tolist())


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad ``H×W×3`` at the bottom/right so both sides are at least ``size``."""
    ph, pw = max(0, size - img.shape[0]), max(0, size - img.shape[1])
    if not (ph or pw):
        return img
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(img.shape[:2]) > 1 else "edge")
