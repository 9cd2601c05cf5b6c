"""Matching a rain source (rainy copies of a dataset's images made elsewhere) to the dataset's labelled images:
what ``bench`` scores as a rain source (``rainy:``) and what ``train-task`` trains on (``rain.path``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from derain.imageio import is_image_file, walk_files


class RainSourceLike(Protocol):
    """What matching needs of a rain source (``eval.bench_config.RainSource``, ``downstream.rain_augment``'s
    ``rain.path``): its name for messages, its folder, and the RainCityscapes setting (None: plain rainy copies)."""

    name: str
    path: str
    raincityscapes: dict[str, Any] | None


def match_rain_source(source: RainSourceLike, dataset: Any, n: int, split: str = "val") -> list[Path]:
    """The rainy file of each of the first ``n`` labelled images (same stem, any image extension); ``{split}`` in
    ``source.path`` is replaced by the dataset's ``split``, as in the dataset's own path.

    ``source.path`` is the rained copy of the dataset's image folder or of a folder above it (the dataset root that
    ``derainbench synth --with-labels DATA DATA-rainy`` copies, say): image ``<images_dir>/REL`` is looked up at
    ``path/TAIL/REL`` for every TAIL ending ``images_dir`` (none: ``path/REL``, the image folder's copy; then its
    last folder, last two, ...; e.g. ``images/val2017/REL`` in a COCO root's copy). The one TAIL under which any
    labelled image has a rainy file is used; two such TAILs (the folder holds copies at two levels) are ambiguous
    and refused naming both, none is refused too, as is a folder that is the clean image folder itself. Under the
    TAIL used, a DatasetError lists every labelled image without a rainy file."""
    from downstream.datasets import DatasetError

    root = Path(source.path.replace("{split}", split))
    if source.raincityscapes is not None:
        from downstream.raincityscapes import match_raincityscapes

        return match_raincityscapes(source.name, root, source.raincityscapes, dataset, n)
    if not root.is_dir():
        raise FileNotFoundError(f"rain source {source.name!r}: folder not found: {root}")
    files: dict[str, list[Path]] = {}
    for f in walk_files(root):
        if is_image_file(f):
            files.setdefault(f.relative_to(root).with_suffix("").as_posix(), []).append(f)
    images_dir = Path(dataset.images_dir)
    rels = [Path(dataset.image_path(i)).relative_to(images_dir).with_suffix("").as_posix() for i in range(n)]
    what = f"rain source {source.name!r} ({root})"
    first: dict[str, int] = {}
    for i, rel in enumerate(rels):
        if rel in first:  # x.jpg and x.png: one rainy x.* would stand for both
            a, b = (Path(dataset.image_path(k)).relative_to(images_dir).as_posix() for k in (first[rel], i))
            raise DatasetError(f"{what}: the labelled images {a} and {b} of {images_dir} share one name without "
                               "extension, so one rainy file would stand for both; rename one of them")
        first[rel] = i
    tails = _image_folder_tails(images_dir)
    found = [t for t in tails if any(_under(t, rel) in files for rel in rels)]
    if len(found) > 1:
        a, b = (root / t if t else root for t in found[:2])
        raise DatasetError(f"{what} is ambiguous: it holds rainy copies of the labelled images of {images_dir} both "
                           f"in {a} and in {b}; point rainy: at the one meant, or remove the other")
    if not found:
        example = " or ".join(str(root / _under(t, rels[0])) for t in tails[:3:2])
        raise DatasetError(f"{what} does not match the labelled images of {images_dir}: none of the {n} has a rainy "
                           f"file in it as a copy of the image folder or of a folder above it (e.g. {example}, any "
                           f"image extension)" + ("" if files else "; it holds no image files"))
    tail = found[0]
    folder = root / tail if tail else root
    if folder.resolve() == images_dir.resolve():
        raise DatasetError(f"{what} is the dataset's own image folder {images_dir} (clean images), not a rainy copy")
    out, missing, ambiguous = [], [], []
    for rel in rels:
        hits = files.get(_under(tail, rel), [])
        if len(hits) == 1:
            out.append(hits[0])
        else:
            (missing if not hits else ambiguous).append(rel)
    if missing or ambiguous:
        parts = [f"{what} does not match the labelled images of {images_dir}"
                 + (f" (the copy of it in {folder}):" if tail else ":")]
        if missing:
            parts.append(f"{len(missing)} without a rainy file (same relative path, any image extension): "
                         + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        if ambiguous:
            parts.append(f"{len(ambiguous)} with several rainy files of other extensions: " + ", ".join(ambiguous[:10]))
        raise DatasetError(" ".join(parts))
    return out


def _image_folder_tails(images_dir: Path) -> list[str]:
    """``""`` and the trailing sub-paths of ``images_dir`` (``val2017``, ``images/val2017``, ...), shortest first, up
    to its anchor or a ``..``: where a rained copy of the image folder or of a folder above it keeps the images."""
    parts = images_dir.absolute().parts
    tails = [""]
    for k in range(1, len(parts)):
        part = parts[-k]
        if part == ".." or Path(part).anchor:
            break
        tails.append("/".join(parts[-k:]))
    return tails


def _under(tail: str, rel: str) -> str:
    return f"{tail}/{rel}" if tail else rel
