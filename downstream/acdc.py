"""ACDC's rain images as distributed (``format: acdc`` of the segmentation task): labelled real rain.

Layout (``rgb_anon_trainvaltest.zip`` and ``gt_trainval.zip`` unpacked into ROOT, with or without the zip names as
an extra folder level)::

    ROOT/[rgb_anon_trainvaltest/]rgb_anon/rain/{split}/{seq}/{seq}_frame_{n}_rgb_anon.png
    ROOT/[gt_trainval/]gt/rain/{split}/{seq}/{seq}_frame_{n}_gt_labelTrainIds.png   (or _gt_labelIds.png)
    ROOT/[rgb_anon_trainvaltest/]rgb_anon/rain/{split}_ref/{seq}/{seq}_frame_{n}_rgb_ref_anon.png  (not read)

Labels are in Cityscapes' label space (the 19 train ids, 255 = ignore; label ids mapped by the same table: see
:mod:`downstream.cityscapes`). The images are the rain: a bench dataset of this format must set ``real_rain`` (no
synthetic rain on top, no PSNR/SSIM). The ``_ref`` images show the same places in good weather but are **not
pixel-aligned** with the rainy frames (another drive, other viewpoint and moment), so no PSNR/SSIM can be computed
against them, and ACDC ships **no ground truth for them** (``gt/`` holds labels of the adverse frames only), so
they cannot give a labelled "reference" row either.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from downstream.cityscapes import CityscapesDataset
from downstream.datasets import DatasetError, path_spec, path_value

ZIP_FOLDERS = {"rgb_anon": "rgb_anon_trainvaltest", "gt": "gt_trainval"}


class AcdcDataset(CityscapesDataset):
    """The labelled frames of one ACDC condition and split: ``ds[i] -> (image H×W×3 float32 in [0, 1], mask H×W
    int64 train ids, 255 = ignore)``; ``images_dir`` = ``rgb_anon/{condition}/{split}`` (frames keep their
    ``{seq}/`` folder)."""

    image_suffix, label_ids_suffix, train_ids_suffix = "_rgb_anon.png", "_gt_labelIds.png", "_gt_labelTrainIds.png"
    images_what, gt_what = "ACDC images (rgb_anon/rain/{split})", "ACDC ground truth (gt/rain/{split})"


def acdc_folder(root: Path, name: str) -> Path:
    """``root/name`` or ``root/<zip name>/name`` (``rgb_anon`` or ``gt``); both present is ambiguous, an error."""
    found = [d for d in (root / name, root / ZIP_FOLDERS[name] / name) if d.is_dir()]
    if len(found) > 1:
        raise DatasetError(f"ACDC root {root} has both {found[0]} and {found[1]}; keep one")
    if not found:
        raise DatasetError(f"ACDC root {root}: no {name}/ folder (nor {ZIP_FOLDERS[name]}/{name}/)")
    return found[0]


def open_acdc(path: Any, split: str = "val", condition: str = "rain") -> AcdcDataset:
    """``path`` = the ACDC root (``rgb_anon/`` and ``gt/``, possibly inside their zip-named folders), or ``{"images":
    DIR, "gt": DIR}`` naming the two split folders (``{split}`` replaced; e.g. another condition's)."""
    if isinstance(path, Mapping):
        spec = path_spec(path, ("images", "gt"), split)
        return AcdcDataset(spec["images"], spec["gt"])
    root = path_value(path, "the ACDC root or {images, gt}")
    if not root.is_dir():
        raise DatasetError(f"ACDC root not found: {root}")
    return AcdcDataset(acdc_folder(root, "rgb_anon") / condition / split, acdc_folder(root, "gt") / condition / split)
