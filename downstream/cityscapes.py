"""Cityscapes semantic segmentation as distributed (``format: cityscapes`` of the segmentation task).

Layout (the ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` archives unpacked side by side)::

    ROOT/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png       (34 label ids, 0..33)
    ROOT/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png  (optional: 19 train ids, 255 = ignore)

The benchmark scores the 19 evaluated classes: a ``_gtFine_labelTrainIds.png`` (written by cityscapesScripts'
``preparation/createTrainIdLabelImgs.py``) is used as it is when present, otherwise the ``_gtFine_labelIds.png`` is
mapped to train ids by :data:`LABELS`, the table of cityscapesScripts ``cityscapesscripts/helpers/labels.py``
(checked at mcordts/cityscapesScripts HEAD 0bcc4a7): 34 labels with ids 0..33, the 19 with a train id are the
evaluated classes (``ignoreInEval`` False), every other id maps to 255 (ignore). ``license plate`` (id -1) is never
drawn into label images. mIoU then follows the official evaluator (``evalPixelLevelSemanticLabeling.py``): pixels
whose ground truth is ignored count neither as true nor as false positives (see :mod:`downstream.metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from derain.imageio import walk_files
from downstream.datasets import (
    IGNORE_INDEX,
    DatasetError,
    MaskSegmentationDataset,
    SplitNotFoundError,
    path_spec,
    path_value,
    read_mask,
)

# (name, label id, train id) of cityscapesScripts helpers/labels.py; 255 = not evaluated (ignoreInEval)
LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
)
NUM_LABEL_IDS = len(LABELS)  # 34
# the 19 evaluated classes in train-id order (road .. bicycle)
TRAIN_NAMES: tuple[str, ...] = tuple(name for name, _, t in sorted(LABELS, key=lambda x: x[2]) if t != IGNORE_INDEX)
# label id -> train id, for every uint8 value (ids 34..254 are not Cityscapes label ids: read_label refuses them)
ID_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.int64)
for _name, _id, _train in LABELS:
    ID_TO_TRAIN[_id] = _train

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"


def label_ids_to_train_ids(label_ids: np.ndarray, where: str = "label ids") -> np.ndarray:
    """Map an ``H×W`` array of Cityscapes label ids (0..33) to train ids (0..18, 255 = ignore), int64.

    Any other value is a :class:`DatasetError` naming ``where`` (e.g. the file)."""
    ids = np.asarray(label_ids).astype(np.int64)
    bad = np.unique(ids[(ids < 0) | (ids >= NUM_LABEL_IDS)])
    if bad.size:
        raise DatasetError(f"{where}: values {bad.tolist()[:10]} are not Cityscapes label ids 0..{NUM_LABEL_IDS - 1}")
    return ID_TO_TRAIN[ids]


class CityscapesDataset(MaskSegmentationDataset):
    """Cityscapes fine annotations of one split: ``ds[i] -> (image H×W×3 float32 in [0, 1], mask H×W int64 train
    ids 0..18, 255 = ignore)``; ``ds.names`` are the 19 evaluated classes. ``images_dir`` is
    ``leftImg8bit/{split}`` (images keep their ``{city}/`` folder: rain sources and derained copies mirror it).

    Every image needs its ground truth (train ids preferred, else label ids), every ground-truth file its image;
    all masks are decoded and checked on open. Subclasses for datasets in the Cityscapes label space (ACDC) set the
    file-name suffixes and folder descriptions."""

    image_suffix, label_ids_suffix, train_ids_suffix = IMAGE_SUFFIX, LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX
    images_what, gt_what = "Cityscapes images (leftImg8bit/{split})", "Cityscapes ground truth (gtFine/{split})"

    def __init__(self, images_dir: str | Path, gt_dir: str | Path) -> None:
        self.images_dir, self.masks_dir = Path(images_dir), Path(gt_dir)
        self.classes = list(TRAIN_NAMES)
        if not self.images_dir.is_dir():  # the split is not there (train-task then trains without val)
            raise SplitNotFoundError(f"{self.images_what} folder not found: {self.images_dir}")
        if not self.masks_dir.is_dir():
            raise DatasetError(f"{self.gt_what} folder not found: {self.masks_dir}")
        self.images = sorted(p for p in walk_files(self.images_dir) if p.name.endswith(self.image_suffix))
        if not self.images:
            raise DatasetError(f"{self.images_dir}: no *{self.image_suffix} images in its subfolders")
        self.masks, self.mapped = [], []
        for image in self.images:
            rel = image.relative_to(self.images_dir)
            stem = rel.name[: -len(self.image_suffix)]
            train_ids, label_ids = (self.masks_dir / rel.parent / f"{stem}{s}" for s in (self.train_ids_suffix,
                                                                                       self.label_ids_suffix))
            if train_ids.is_file():
                self.masks.append(train_ids)
                self.mapped.append(False)
            elif label_ids.is_file():
                self.masks.append(label_ids)
                self.mapped.append(True)
            else:
                raise DatasetError(f"ground truth not found for {image}: {label_ids} (or {train_ids.name})")
        stems = {p.relative_to(self.images_dir).as_posix()[: -len(self.image_suffix)] for p in self.images}
        suffixes = (self.label_ids_suffix, self.train_ids_suffix)
        orphans = sorted(q for q in walk_files(self.masks_dir) if q.name.endswith(suffixes)
                         and _strip(q.relative_to(self.masks_dir).as_posix(), suffixes) not in stems)
        if orphans:
            raise DatasetError(f"ground truth without its image: {orphans[0]} ({len(orphans)} in all)")
        self.sizes = [self._check(i) for i in range(len(self.images))]

    def read_label(self, i: int) -> np.ndarray:
        """Train ids of image ``i`` (``H×W`` int64, 255 = ignore), mapped from label ids where needed."""
        mask = read_mask(self.masks[i])
        return label_ids_to_train_ids(mask, str(self.masks[i])) if self.mapped[i] else mask


def _strip(rel: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if rel.endswith(suffix):
            return rel[: -len(suffix)]
    return rel


def open_cityscapes(path: Any, split: str = "val") -> CityscapesDataset:
    """``path`` = the Cityscapes root (holding ``leftImg8bit/`` and ``gtFine/``), or ``{"images": DIR, "gt": DIR}``
    naming the two split folders (``{split}`` replaced), e.g. ``{images: /data/leftImg8bit/{split}, gt:
    /data/gtFine/{split}}``."""
    if isinstance(path, Mapping):
        spec = path_spec(path, ("images", "gt"), split)
        return CityscapesDataset(spec["images"], spec["gt"])
    root = path_value(path, "the Cityscapes root or {images, gt}")
    return CityscapesDataset(root / "leftImg8bit" / split, root / "gtFine" / split)
