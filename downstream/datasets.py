"""Task datasets for the downstream benchmark: detection (YOLO layout or COCO JSON) and semantic masks.

Every dataset validates its files when opened, so a broken label is reported once, up front, with the file
and line, instead of failing mid-benchmark.

Detection protocol (what ``eval`` codes against)::

    ds.names            list[str], class id = index
    len(ds)
    ds.image_path(i)    Path
    ds.image_size(i)    (h, w), from the image header (no pixel decoding)
    ds[i]               (image H×W×3 float32 RGB in [0, 1],
                         {"boxes": float32 N×4 xyxy absolute pixels, "classes": int64 N})

COCO ids: ``ds.image_ids[i]`` and ``ds.category_ids[c]`` are the ids written by :func:`to_coco_dict` (and the
ids predictions must use). COCO sets keep their original ids; YOLO sets use ``image id = index + 1`` and
``category id = class index + 1`` (as ultralytics does for non-COCO data sets).

Segmentation: ``ds[i] -> (image H×W×3 float32, mask H×W int64)`` with class ids ``0..K-1`` and 255 = ignore.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import yaml
from PIL import UnidentifiedImageError

from derain.config import ConfigError, read_yaml
from derain.fileio import read_json
from derain.imageio import image_size, is_image_file, open_image, read_image, walk_files

IGNORE_INDEX = 255
BOX_TOLERANCE = 1e-3  # normalised (YOLO) / relative-to-size (COCO) slack for boxes poking out of the image
MASK_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")


class DatasetError(ValueError):
    """A dataset file that is missing or malformed; the message names the file (and line where there is one)."""


class SplitNotFoundError(DatasetError):
    """The split asked for is not there at all (no such split in a data.yaml, no split list, annotation file or
    split folder), as opposed to a split that is there but broken: ``train-task`` trains without a val split in the
    first case and stops in the second."""


# ----------------------------------------------------------------------------------------------- helpers


# What a complete file of these formats ends with: JPEG's end-of-image marker, PNG's IEND chunk (with its CRC).
FILE_ENDS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND\xaeB`\x82"}


def read_image_size(path: Path) -> tuple[int, int]:
    """``(h, w)`` of an image from its header; unreadable files are a :class:`DatasetError`.

    A JPEG or PNG that does not end as a complete file does (:data:`FILE_ENDS`, the test ultralytics makes) is
    decoded in full once: one that does not decode (truncated) is refused here, when the dataset is opened, by bench
    and train-task alike (ultralytics would drop it from training with a warning, or re-save it over the user's
    file); one that decodes (bytes after the end marker, as in a few COCO JPEGs) is read as it is."""
    try:
        size = image_size(path)  # EXIF orientation applied: labels describe the upright image
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read image header of {path}: {exc}") from exc
    end = FILE_ENDS.get(path.suffix.lower())
    if end is not None:
        with open(path, "rb") as f:
            f.seek(max(os.fstat(f.fileno()).st_size - len(end), 0))
            complete = f.read() == end
        if not complete:
            try:
                read_image(path)
            except OSError as exc:  # derain.imageio.ImageReadError
                raise DatasetError(f"{path} is truncated or damaged: {exc}") from exc
    return size


def name_under(root: Path, name: str, where: str) -> Path:
    """``root / name`` for a file name a dataset's index gives (a COCO ``file_name``, a BDD100K frame ``name``, a VOC
    id): names are paths relative to ``root``, so an absolute name or one with a ``..`` part (which could reach any
    file, and make train-task's YOLO view replace the user's image by a link) is a :class:`DatasetError` beginning
    with ``where`` (the file and entry)."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(name).drive:
        raise DatasetError(f"{where} {name!r} is an absolute path; dataset file names are relative to the image "
                           f"folder {root}")
    if ".." in posix.parts:
        raise DatasetError(f"{where} {name!r} leaves the image folder {root} (a '..' part); dataset file names are "
                           "relative to it")
    return root / name


def listed_twice(names: Sequence[str]) -> list[str]:
    """The names that occur more than once in ``names``, in first-seen order."""
    return [name for name, count in Counter(names).items() if count > 1]


def _check_box(box: Sequence[float], h: int, w: int, where: str) -> np.ndarray:
    """Absolute xyxy box → float32 array clipped to the image; beyond the tolerance it is an error."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite(v) for v in (x0, y0, x1, y1)):
        raise DatasetError(f"{where}: box has non-finite values {box}")
    if x1 <= x0 or y1 <= y0:
        raise DatasetError(f"{where}: box has zero or negative size {box}")
    tx, ty = BOX_TOLERANCE * w, BOX_TOLERANCE * h
    if x0 < -tx or y0 < -ty or x1 > w + tx or y1 > h + ty:
        raise DatasetError(f"{where}: box {[x0, y0, x1, y1]} lies outside the {w}×{h} image")
    return np.array([max(x0, 0.0), max(y0, 0.0), min(x1, w), min(y1, h)], dtype=np.float32)


def _stack_boxes(boxes: list[np.ndarray]) -> np.ndarray:
    return np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)


@dataclass
class ImageRecord:
    """One validated detection image: boxes are xyxy absolute pixels (float32 N×4), classes int64 N."""

    path: Path
    file_name: str  # relative to the dataset's ``images_dir`` (posix), as written to COCO JSON
    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    areas: np.ndarray | None = None  # COCO ``area`` when the source gives it, else box areas are used
    # The image's ground truth as the dataset's official evaluator reads it, as COCO annotations in dataset ids
    # (boxes unclipped, crowd / ignored / difficult objects with iscrowd=1; the non-crowd ones in target order);
    # None: the targets are the whole ground truth (YOLO). See :func:`to_coco_dict`.
    annotations: list[dict[str, Any]] | None = None


class DetectionDataset:
    """Common implementation of the detection protocol over a list of :class:`ImageRecord`."""

    def __init__(self, names: list[str], category_ids: list[int], images_dir: Path, records: list[ImageRecord],
                 source: str) -> None:
        if not records:
            raise DatasetError(f"{source}: the dataset has no images")
        twice = listed_twice([r.file_name for r in records])
        if twice:  # its labels would be scored twice (and a rain source pair one file with both)
            raise DatasetError(f"{source}: image(s) listed twice: {', '.join(twice[:10])}")
        self.names = names
        self.category_ids = category_ids
        self.images_dir = images_dir
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, i: int) -> Path:
        return self.records[i].path

    def image_size(self, i: int) -> tuple[int, int]:
        """``(h, w)`` from the header, read when the dataset was opened."""
        return self.records[i].height, self.records[i].width

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.records]

    index_files: tuple[Path, ...] = ()  # files every image's labels come from (data.yaml, annotation JSON)
    protocols: tuple[str, ...] = ("coco",)  # how its official evaluators score it (VOC sets add "voc": the devkit AP)

    def label_files(self, i: int) -> list[Path]:
        """Image ``i``'s own label files, listed whether or not they exist (a new one gives it labels)."""
        return []

    def files(self, n: int | None = None) -> list[Path]:
        """Every file the first ``n`` images and their labels are read from (the bench fingerprints their content)."""
        per_image = (f for i in range(len(self))[:n] for f in (self.image_path(i), *self.label_files(i)))
        return [*self.index_files, *per_image]

    def target(self, i: int) -> dict[str, np.ndarray]:
        """``{"boxes": float32 N×4 xyxy px, "classes": int64 N}`` (copies, safe to edit)."""
        r = self.records[i]
        return {"boxes": r.boxes.copy(), "classes": r.classes.copy()}

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        r = self.records[i]
        image = read_image(r.path)
        if image.shape[:2] != (r.height, r.width):
            raise DatasetError(f"{r.path}: decoded size {image.shape[:2]} differs from header size "
                               f"{(r.height, r.width)}")
        return image, self.target(i)

    def with_images_dir(self, images_dir: str | Path) -> DetectionDataset:
        """The same labels over other images with the same relative names (rainy / derained copies).

        Each ``images_dir / file_name`` must exist and have the original size; ids, names and boxes are shared.
        """
        new = copy.copy(self)
        new.images_dir = Path(images_dir)
        new.records = [dataclasses.replace(r, path=new.images_dir / r.file_name) for r in self.records]
        for r in new.records:
            if not r.path.is_file():
                raise DatasetError(f"image {r.file_name!r} not found in {new.images_dir}")
            if read_image_size(r.path) != (r.height, r.width):
                raise DatasetError(f"{r.path} is {read_image_size(r.path)} (h, w), its original {r.height, r.width}")
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.names)} classes, {self.images_dir})"


# ----------------------------------------------------------------------------------------------- YOLO


def _yolo_names(data: Mapping[str, Any], yaml_path: Path) -> list[str]:
    """``names`` as a list or ``{id: name}`` dict with ids 0..K-1 (``nc`` alone gives ``"0".."K-1"``)."""
    names = data.get("names")
    if names is None:
        if "nc" not in data:
            raise DatasetError(f"{yaml_path}: needs 'names' (or 'nc')")
        return [str(i) for i in range(int(data["nc"]))]
    if isinstance(names, Mapping):
        try:
            keyed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{yaml_path}: 'names' keys must be integer class ids") from exc
        if sorted(keyed) != list(range(len(keyed))):
            raise DatasetError(f"{yaml_path}: 'names' ids must be 0..{len(keyed) - 1}, got {sorted(keyed)}")
        names = [keyed[i] for i in range(len(keyed))]
    elif isinstance(names, (list, tuple)):
        names = [str(n) for n in names]
    else:
        raise DatasetError(f"{yaml_path}: 'names' must be a list or a dict")
    if "nc" in data and int(data["nc"]) != len(names):
        raise DatasetError(f"{yaml_path}: nc={data['nc']} but {len(names)} names")
    if not names:
        raise DatasetError(f"{yaml_path}: no class names")
    return names


def _yolo_image_files(entry: Any, root: Path, yaml_path: Path, split: str) -> list[Path]:
    """Images of a split entry: a folder, a ``.txt`` list of image paths, or a list of those."""
    entries = entry if isinstance(entry, (list, tuple)) else [entry]
    files: list[Path] = []
    for item in entries:
        p = Path(str(item))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            files += [q for q in walk_files(p) if is_image_file(q)]
        elif p.is_file() and p.suffix == ".txt":
            lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
            files += [(Path(ln) if Path(ln).is_absolute() else p.parent / ln) for ln in lines]
        else:
            raise DatasetError(f"{yaml_path}: split {split!r} folder not found: {p}")
    return files


def yolo_label_path(image: Path) -> Path:
    """``…/images/<sub>/x.jpg`` → ``…/labels/<sub>/x.txt`` (the last ``images`` folder is swapped)."""
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            return Path(*parts).with_suffix(".txt")
    raise DatasetError(f"{image}: YOLO images must lie under an 'images' folder (labels go in 'labels')")


def _parse_yolo_line(line: str, where: str, n_classes: int) -> tuple[int, np.ndarray]:
    """``cls cx cy w h`` (or a polygon ``cls x1 y1 x2 y2 …``) → class and normalised xyxy."""
    try:
        values = [float(v) for v in line.split()]
    except ValueError as exc:
        raise DatasetError(f"{where}: not numbers: {line!r}") from exc
    if len(values) < 5 or (len(values) > 5 and (len(values) % 2 == 0 or len(values) < 7)):
        raise DatasetError(f"{where}: expected 'class cx cy w h' (5 values), got {len(values)}: {line!r}")
    cls = values[0]
    if cls != int(cls) or not 0 <= cls < n_classes:
        raise DatasetError(f"{where}: class id {values[0]:g} out of range 0..{n_classes - 1}")
    if len(values) == 5:
        cx, cy, bw, bh = values[1:]
        box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    else:  # segment label: the polygon's extent is the box, as ultralytics does
        xy = np.array(values[1:]).reshape(-1, 2)
        box = np.array([*xy.min(0), *xy.max(0)])
    return int(cls), box


def read_yolo_labels(label_path: Path, n_classes: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (float32 N×4 xyxy px) and classes (int64 N) of one label file; a missing file is no boxes."""
    boxes, classes = [], []
    if label_path.is_file():
        for lineno, line in enumerate(label_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{label_path}:{lineno}"
            cls, nbox = _parse_yolo_line(line, where, n_classes)
            boxes.append(_check_box(nbox * np.array([w, h, w, h]), h, w, where))
            classes.append(cls)
    return _stack_boxes(boxes), np.array(classes, dtype=np.int64)


def _orphan_labels(images: list[Path]) -> list[Path]:
    """Label files in the label folders of ``images`` that have no image with the same stem."""
    wanted = {yolo_label_path(p) for p in images}
    folders = {p.parent for p in wanted}
    return sorted(q for d in folders if d.is_dir() for q in d.glob("*.txt") if q not in wanted)


class YoloDetectionDataset(DetectionDataset):
    """Ultralytics layout: ``data.yaml`` (``path`` optional, ``train``/``val``/``test``, ``names`` list or dict).

    Relative split folders resolve against ``path`` (itself relative to the YAML's folder) or the YAML's folder.
    ``images/val/x.jpg`` ↔ ``labels/val/x.txt`` with lines ``cls cx cy w h`` normalised to [0, 1]; an image
    without a label file is a background image. Boxes may poke out by ``BOX_TOLERANCE`` and are clipped.
    """

    def __init__(self, data_yaml: str | Path, split: str = "val") -> None:
        yaml_path = Path(data_yaml)
        data = _load_yaml(yaml_path)
        root = yaml_path.parent
        if data.get("path"):
            root = Path(str(data["path"])) if Path(str(data["path"])).is_absolute() else root / str(data["path"])
        if not data.get(split):
            raise SplitNotFoundError(f"{yaml_path}: no {split!r} split (keys: {sorted(data)})")
        names = _yolo_names(data, yaml_path)
        images = _yolo_image_files(data[split], root, yaml_path, split)
        orphans = _orphan_labels(images)
        if orphans:
            raise DatasetError(f"label file without its image: {orphans[0]} ({len(orphans)} in all)")
        shared_labels(images, yolo_label_path)
        images_dir = images[0].parent if len(images) == 1 else Path(os.path.commonpath(images)) if images else root
        records = [self._record(p, i, images_dir, len(names)) for i, p in enumerate(images)]
        super().__init__(names, list(range(1, len(names) + 1)), images_dir, records, f"{yaml_path} [{split}]")
        self.data_yaml, self.split, self.index_files = yaml_path, split, (yaml_path,)

    def label_files(self, i: int) -> list[Path]:
        return [yolo_label_path(self.records[i].path)]

    @staticmethod
    def _record(path: Path, index: int, images_dir: Path, n_classes: int) -> ImageRecord:
        if not path.is_file():
            raise DatasetError(f"image listed but not found: {path}")
        h, w = read_image_size(path)
        boxes, classes = read_yolo_labels(yolo_label_path(path), n_classes, h, w)
        rel = path.relative_to(images_dir).as_posix()
        return ImageRecord(path, rel, index + 1, h, w, boxes, classes)


def shared_labels(images: Sequence[Path], label_of: Any) -> None:
    """Refuse two distinct images whose label file ``label_of(image)`` is one file (``x.jpg`` and ``x.png`` beside one
    ``x.txt`` / ``x.xml`` / ``x.png`` mask): its labels would be put on both."""
    first: dict[Path, Path] = {}
    for image in images:
        label = label_of(image)
        if label in first and first[label] != image:
            raise DatasetError(f"{label} is the label file of two images, {first[label]} and {image}; keep one of "
                               "them (or rename it with its own labels)")
        first.setdefault(label, image)


def _load_yaml(path: Path) -> dict[str, Any]:
    """The dataset YAML as a mapping (via the project's one YAML reader); problems are DatasetErrors."""
    try:
        return read_yaml(path)
    except ConfigError as exc:
        raise DatasetError(f"dataset {exc}") from exc


# ----------------------------------------------------------------------------------------------- COCO


class CocoDetectionDataset(DetectionDataset):
    """COCO JSON (``images``, ``annotations`` with ``bbox`` = xywh px, ``categories``).

    Category ids map to contiguous class indices ``0..K-1`` in sorted id order; ``category_ids[c]`` gives the
    original id back. ``iscrowd=1`` annotations are not targets (training, drawing) but are scored as pycocotools
    scores them: the record keeps every annotation as the file gives it for :func:`to_coco_dict`.
    Images without annotations are background images.
    """

    def __init__(self, images_dir: str | Path, annotations_json: str | Path) -> None:
        self.images_dir = Path(images_dir)
        ann_path = Path(annotations_json)
        data = _load_json(ann_path)
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        category_ids = [int(c["id"]) for c in cats]
        if len(set(category_ids)) != len(category_ids):
            raise DatasetError(f"{ann_path}: duplicate category ids")
        index_of = {cid: k for k, cid in enumerate(category_ids)}
        by_image: dict[int, list[dict[str, Any]]] = {}
        twice = listed_twice([str(im["file_name"]) for im in data["images"]])
        if twice:
            raise DatasetError(f"{ann_path}: file_name listed twice (under two image ids): {', '.join(twice[:10])}")
        ids = [int(im["id"]) for im in data["images"]]
        image_ids = set(ids)
        if len(image_ids) != len(ids):  # boxes of both would land on one image
            dup = sorted(i for i, k in Counter(ids).items() if k > 1)
            raise DatasetError(f"{ann_path}: duplicate image ids {dup[:10]}{' ...' if len(dup) > 10 else ''}")
        for k, ann in enumerate(data["annotations"]):
            where = f"{ann_path}: annotation #{k} (id {ann.get('id')})"
            if int(ann.get("image_id", -1)) not in image_ids:
                raise DatasetError(f"{where}: unknown image_id {ann.get('image_id')}")
            if int(ann.get("category_id", -1)) not in index_of:
                raise DatasetError(f"{where}: unknown category_id {ann.get('category_id')}")
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        records = [self._record(im, by_image.get(int(im["id"]), []), index_of, ann_path) for im in data["images"]]
        super().__init__([str(c["name"]) for c in cats], category_ids, self.images_dir, records, str(ann_path))
        self.annotations_json, self.index_files = ann_path, (ann_path,)

    def _record(self, im: dict[str, Any], anns: list[dict[str, Any]], index_of: dict[int, int],
                ann_path: Path) -> ImageRecord:
        path = name_under(self.images_dir, str(im["file_name"]), f"{ann_path}: image {im['id']} file_name")
        if not path.is_file():
            raise DatasetError(f"{ann_path}: image {im['file_name']!r} (id {im['id']}) not found: {path}")
        h, w = read_image_size(path)
        if ("height" in im and int(im["height"]) != h) or ("width" in im and int(im["width"]) != w):
            raise DatasetError(f"{ann_path}: image {path} is {w}×{h} but the JSON says {im['width']}×{im['height']}")
        boxes, classes, areas = [], [], []
        for ann in anns:
            where = f"{ann_path}: annotation id {ann.get('id')} of {im['file_name']}"
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise DatasetError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
            x, y, bw, bh = (float(v) for v in bbox)
            box = _check_box([x, y, x + bw, y + bh], h, w, where)
            if ann.get("iscrowd", 0):
                continue
            boxes.append(box)
            classes.append(index_of[int(ann["category_id"])])
            areas.append(float(ann.get("area", bw * bh)))
        return ImageRecord(path, str(im["file_name"]), int(im["id"]), h, w, _stack_boxes(boxes),
                           np.array(classes, dtype=np.int64), np.array(areas, dtype=np.float64), list(anns))


def read_json_file(path: Path, what: str) -> Any:
    """The parsed JSON of an annotation file; a missing or malformed ``what`` file is a one-line DatasetError."""
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    try:
        return read_json(path)
    except ValueError as exc:  # bad syntax, not UTF-8, nested too deeply: one line naming the file
        raise DatasetError(str(exc)) from None


def _load_json(path: Path) -> dict[str, Any]:
    data = read_json_file(path, "annotation file")
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: COCO JSON must be an object with lists images, annotations, categories; got a "
                           f"{type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(f"{path}: COCO JSON needs lists {missing}")
    for section, keys in (("categories", ("id", "name")), ("images", ("id", "file_name"))):
        for k, entry in enumerate(data[section]):
            lacking = [key for key in keys if not isinstance(entry, dict) or key not in entry]
            if lacking:
                raise DatasetError(f"{path}: {section}[{k}] lacks {', '.join(repr(x) for x in lacking)} "
                                   f"(every COCO {section[:-1]} needs {', '.join(keys)})")
    for section, keys in (("categories", ("id",)), ("images", ("id",)), ("annotations", ("image_id", "category_id"))):
        for k, entry in enumerate(data[section]):
            for key in keys:
                value = entry.get(key, 0) if isinstance(entry, dict) else None
                try:
                    int(value)
                except (TypeError, ValueError):
                    raise DatasetError(f"{path}: {section}[{k}] {key} {value!r} is not an integer id") from None
    return data


def box_annotation(image_id: int, category_id: int, bbox: Sequence[float], iscrowd: bool = False) -> dict[str, Any]:
    """A COCO box annotation (``bbox`` = x, y, w, h px; ``area`` = w·h) without an id (:func:`to_coco_dict` numbers
    them)."""
    x, y, w, h = (float(v) for v in bbox)
    return {"image_id": int(image_id), "category_id": int(category_id), "bbox": [x, y, w, h], "area": w * h,
            "iscrowd": int(bool(iscrowd))}


def record_annotations(dataset: DetectionDataset, r: ImageRecord) -> list[dict[str, Any]]:
    """Image ``r``'s COCO ground truth (copies, without ids): the record's ``annotations`` as the reader kept them
    (``area`` filled in from ``bbox`` where the source gives none, ``iscrowd`` as 0/1), else its targets."""
    if r.annotations is not None:
        out = []
        for ann in r.annotations:
            a = {**ann, "iscrowd": int(bool(ann.get("iscrowd", 0)))}
            a.pop("id", None)
            if "area" not in a:
                a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
            out.append(a)
        return out
    areas = r.areas if r.areas is not None and len(r.areas) == len(r.boxes) else None
    out = []
    for k, (box, cls) in enumerate(zip(r.boxes.tolist(), r.classes.tolist(), strict=True)):
        ann = box_annotation(r.image_id, dataset.category_ids[cls], [box[0], box[1], box[2] - box[0], box[3] - box[1]])
        if areas is not None:
            ann["area"] = float(areas[k])
        out.append(ann)
    return out


def to_coco_dict(dataset: DetectionDataset, indices: Sequence[int] | None = None) -> dict[str, Any]:
    """COCO ground truth for ``dataset`` (its images ``indices``, default all), ready for pycocotools
    (``coco.dataset = d; coco.createIndex()``): what the benchmark scores, and what it writes beside its
    prediction files (``predictions/<dataset>.gt.json``) so that ``COCO.loadRes`` + ``COCOeval`` reproduce its
    numbers.

    Image ids and category ids are ``dataset.image_ids`` / ``dataset.category_ids`` (COCO sets: the file's ids;
    YOLO and VOC sets: the image's 1-based position in the split's list and class index + 1; BDD100K: the frame's
    1-based position in the label file, classes 1..10). ``file_name`` is relative to ``dataset.images_dir``.
    Annotations are those the dataset's official evaluator reads (:func:`record_annotations`: COCO annotations as in
    the file, crowd included; BDD100K's and VOC's boxes as their tools convert them, ignored / crowd / difficult
    objects as ``iscrowd=1``), numbered from 1 in image order.
    """
    images, annotations = [], []
    for i in range(len(dataset)) if indices is None else indices:
        r = dataset.records[i]
        images.append({"id": r.image_id, "file_name": r.file_name, "height": r.height, "width": r.width})
        for ann in record_annotations(dataset, r):
            annotations.append({"id": len(annotations) + 1, **ann})
    categories = [{"id": cid, "name": name, "supercategory": "object"}
                  for cid, name in zip(dataset.category_ids, dataset.names, strict=True)]
    return {"info": {"description": f"derainbench ground truth from {dataset!r}"}, "images": images,
            "annotations": annotations, "categories": categories}


def write_yolo_layout(splits: Mapping[str, DetectionDataset], out: str | Path) -> Path:
    """An ultralytics view of opened detection datasets (what ``train-task`` trains on when a dataset is in another
    format): ``out/images/{split}/<file_name>`` are symbolic links to the images, ``out/labels/{split}/<stem>.txt``
    their targets as ``cls cx cy w h`` normalised to [0, 1] (crowd / ignored annotations are not targets, as in
    scoring), ``out/data.yaml`` names the splits and the classes. Returns the data.yaml.

    ``out`` is rebuilt: a view written before (by another dataset, say) is removed first, so the view holds these
    splits only; a folder holding anything else, or holding a dataset image, is refused untouched. A record's
    ``file_name`` that would leave ``out/images/{split}`` is refused (:func:`name_under`)."""
    out = Path(out)
    names: list[str] | None = None
    for split, ds in splits.items():
        if names is not None and list(ds.names) != names:
            raise DatasetError(f"split {split!r} has classes {ds.names}, the others {names}")
        names = list(ds.names)
        for r in ds.records:
            name_under(out / "images" / split, r.file_name, f"split {split!r}: image")
            if out.resolve() in r.path.resolve().parents:
                raise DatasetError(f"image {r.path} lies inside {out}, where train-task writes its YOLO view of the "
                                   "dataset; choose an out outside the dataset")
    _clear_yolo_view(out)
    for split, ds in splits.items():
        for r in ds.records:
            image = out / "images" / split / r.file_name
            image.parent.mkdir(parents=True, exist_ok=True)
            image.symlink_to(r.path.resolve())
            label = yolo_label_path(image)
            label.parent.mkdir(parents=True, exist_ok=True)
            b = r.boxes.astype(np.float64)
            centre = np.stack([(b[:, 0] + b[:, 2]) / 2 / r.width, (b[:, 1] + b[:, 3]) / 2 / r.height,
                               (b[:, 2] - b[:, 0]) / r.width, (b[:, 3] - b[:, 1]) / r.height], axis=1)
            label.write_text("".join(f"{c} {' '.join(f'{v:.6f}' for v in row)}\n"
                                     for c, row in zip(r.classes.tolist(), centre.tolist(), strict=True)))
    data = {"path": str(out.resolve()), **{split: f"images/{split}" for split in splits},
            "names": dict(enumerate(names or []))}
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return out / "data.yaml"


YOLO_VIEW_ENTRIES = {"data.yaml", "images", "labels"}  # what write_yolo_layout writes in its folder


def is_yolo_view(folder: Path) -> bool:
    """Whether ``folder`` holds only what :func:`write_yolo_layout` writes (see :func:`_foreign_to_view`)."""
    return folder.is_dir() and not folder.is_symlink() and not _foreign_to_view(folder)


def _clear_yolo_view(out: Path) -> None:
    """Remove a view :func:`write_yolo_layout` wrote; a folder holding anything else is refused, nothing deleted."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise DatasetError(f"{out} is not a folder train-task wrote its YOLO view in; choose another out")
    foreign = _foreign_to_view(out)
    if foreign:
        raise DatasetError(f"{out} holds files train-task's YOLO view does not write ({', '.join(foreign[:5])}); it "
                           "rebuilds that folder for each run, so choose an out whose data/ is not yours")
    shutil.rmtree(out)


def _foreign_to_view(out: Path) -> list[str]:
    """What in ``out`` a YOLO view does not hold (it holds ``data.yaml``, ``images/`` of links only, ``labels/`` of
    ``.txt`` and ultralytics' ``.cache`` files): up to a few names, relative to ``out``."""
    foreign = sorted(p.name for p in out.iterdir() if p.name not in YOLO_VIEW_ENTRIES)
    for sub, ok in (("images", lambda p: p.is_symlink()), ("labels", lambda p: p.suffix in (".txt", ".cache"))):
        folder = out / sub
        if folder.is_symlink() or folder.is_file():
            foreign.append(sub)
        elif folder.is_dir():
            foreign += [str(f.relative_to(out)) for f in _files_in(folder) if not ok(f)][:5]
    return foreign


def _files_in(folder: Path) -> list[Path]:
    """Every file and link below ``folder``, links not followed."""
    return [Path(d) / name for d, dirs, files in os.walk(folder) for name in files
            + [x for x in dirs if (Path(d) / x).is_symlink()]]


# ----------------------------------------------------------------------------------------------- masks


def read_classes(classes: Sequence[str] | str | Path) -> list[str]:
    """A list of class names, or a ``classes.txt`` (one name a line, id = line number − 1)."""
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        if not path.is_file():
            raise DatasetError(f"classes file not found: {path}")
        lines = path.read_text().splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                raise DatasetError(f"{path}:{lineno}: empty class name")
        names = [ln.strip() for ln in lines]
        source = str(path)
    elif isinstance(classes, Sequence) and not isinstance(classes, (bytes, Mapping)):
        names, source = [str(c) for c in classes], "classes"
    else:
        raise DatasetError(f"classes must be a list of class names or a classes.txt file, got {classes!r}")
    if not names:
        raise DatasetError(f"{source}: no classes")
    twice = listed_twice(names)
    if twice:
        raise DatasetError(f"{source}: class name(s) listed twice: {', '.join(twice)} (class ids would be ambiguous)")
    if len(names) > IGNORE_INDEX:
        raise DatasetError(f"{source}: at most {IGNORE_INDEX} classes (255 is the ignore label)")
    return names


def read_mask(path: Path) -> np.ndarray:
    """A single-channel PNG of class ids → ``H×W`` int64 (palette images give their indices)."""
    try:
        with open_image(path) as im:
            if im.mode not in MASK_MODES:
                raise DatasetError(f"{path}: mask must be single-channel (class ids), got mode {im.mode!r}")
            return np.asarray(im).astype(np.int64)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from exc


class MaskSegmentationDataset:
    """Images plus single-channel PNG masks of class ids with the same stem (255 = ignore).

    ``ds[i] -> (image H×W×3 float32 RGB in [0, 1], mask H×W int64)``. Every mask is decoded and checked on open
    (presence, single channel, size equal to the image's, ids < ``len(classes)`` or 255).
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, images_dir: str | Path, masks_dir: str | Path, classes: Sequence[str] | str | Path) -> None:
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        self.classes = read_classes(classes)
        for d, what in ((self.images_dir, "images"), (self.masks_dir, "masks")):
            if not d.is_dir():
                raise DatasetError(f"{what} folder not found: {d}")
        self.images = sorted(p for p in self.images_dir.iterdir() if p.is_file() and is_image_file(p))
        if not self.images:
            raise DatasetError(f"{self.images_dir}: no images")
        self.masks = [self.masks_dir / f"{p.stem}.png" for p in self.images]
        shared_labels(self.images, lambda p: self.masks_dir / f"{p.stem}.png")
        stems = {p.stem for p in self.images}
        orphans = sorted(p for p in self.masks_dir.glob("*.png") if p.stem not in stems)
        if orphans:
            raise DatasetError(f"mask without its image: {orphans[0]} ({len(orphans)} in all)")
        self.sizes = [self._check(i) for i in range(len(self.images))]

    @property
    def names(self) -> list[str]:
        return self.classes

    def read_label(self, i: int) -> np.ndarray:
        """The mask of image ``i``: ``H×W`` int64 class ids ``0..K-1``, 255 = ignore (subclasses map other ids)."""
        return read_mask(self.masks[i])

    def _check(self, i: int) -> tuple[int, int]:
        image, mask_path = self.images[i], self.masks[i]
        if not mask_path.is_file():
            raise DatasetError(f"mask not found for {image}: {mask_path}")
        h, w = read_image_size(image)
        mask = self.read_label(i)
        if mask.shape != (h, w):
            raise DatasetError(f"{mask_path}: mask is {mask.shape[1]}×{mask.shape[0]} but its image is {w}×{h}")
        bad = np.unique(mask[(mask >= len(self.classes)) & (mask != IGNORE_INDEX)])
        if bad.size or (mask < 0).any():
            raise DatasetError(f"{mask_path}: class ids {bad.tolist()} not in 0..{len(self.classes) - 1} or 255")
        return h, w

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, i: int) -> Path:
        return self.images[i]

    def mask_path(self, i: int) -> Path:
        return self.masks[i]

    def image_size(self, i: int) -> tuple[int, int]:
        return self.sizes[i]

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self.images[i])
        mask = self.read_label(i)
        if image.shape[:2] != mask.shape:
            raise DatasetError(f"{self.masks[i]}: mask size {mask.shape} differs from image {image.shape[:2]}")
        return image, mask

    def files(self, n: int | None = None) -> list[Path]:
        """The first ``n`` images and their masks (the bench fingerprints their content)."""
        return [f for i in range(len(self))[:n] for f in (self.images[i], self.masks[i])]

    def with_images_dir(self, images_dir: str | Path) -> MaskSegmentationDataset:
        """The same masks over other images with the same paths relative to ``images_dir`` (rainy / derained
        copies), sizes checked."""
        new = copy.copy(self)
        new.images_dir = Path(images_dir)
        new.images = [new.images_dir / p.relative_to(self.images_dir) for p in self.images]
        for path, size in zip(new.images, self.sizes, strict=True):
            if not path.is_file():
                raise DatasetError(f"image {path.relative_to(new.images_dir).as_posix()!r} not found in "
                                   f"{new.images_dir}")
            if read_image_size(path) != size:
                raise DatasetError(f"{path} is {read_image_size(path)} (h, w), its original {size}")
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes, {self.images_dir})"


# ----------------------------------------------------------------------------------------------- path specs


def path_spec(path: Any, keys: tuple[str, ...], split: str) -> dict[str, Any]:
    """A dataset's ``{key: path}`` mapping with ``{split}`` inside each string replaced by ``split``: exactly
    ``keys``, each a path string (``classes`` may also be a list of names); anything else is a ValueError naming
    the key."""
    if not isinstance(path, Mapping) or any(k not in path for k in keys):
        raise DatasetError(f"path must be a mapping with keys {list(keys)}, got {path!r}")
    unknown = sorted(str(k) for k in set(path) - set(keys))
    if unknown:
        raise DatasetError(f"unknown path key(s) {', '.join(map(repr, unknown))}; this format reads {list(keys)}")
    for k, v in path.items():
        if not isinstance(v, (str, os.PathLike)) and not (k == "classes" and isinstance(v, list)):
            raise DatasetError(f"path.{k} must be a path string, got {v!r}")
    return {k: (v.replace("{split}", split) if isinstance(v, str) else v) for k, v in path.items()}


def path_value(path: Any, what: str) -> Path:
    """``path`` given as one file or folder (``what`` says which, for the message): a string (or PathLike), else a
    DatasetError naming ``path``."""
    if not isinstance(path, (str, os.PathLike)):
        raise DatasetError(f"path must be {what} (a path string), got {path!r}")
    return Path(path)


def open_mask_dataset(path: Any, split: str = "val") -> MaskSegmentationDataset:
    """``path`` = ``{"images": DIR, "masks": DIR, "classes": [names] or FILE}`` (``{split}`` replaced), or a root
    folder with ``{split}/images``, ``{split}/masks`` and ``classes.txt`` (the CamVid / ``derainbench scenes``
    layout)."""
    if not isinstance(path, Mapping):
        root = path_value(path, "the masks root ({split}/images, {split}/masks, classes.txt) or {images, masks, "
                                "classes}")
        path = {"images": root / split / "images", "masks": root / split / "masks", "classes": root / "classes.txt"}
    spec = path_spec(path, ("images", "masks", "classes"), split)
    if not Path(spec["images"]).is_dir():
        raise SplitNotFoundError(f"images folder not found: {spec['images']}")
    return MaskSegmentationDataset(spec["images"], spec["masks"], spec["classes"])


def open_detection_dataset(format: str, path: Any, split: str = "val", yolo: type = YoloDetectionDataset,
                           coco: type = CocoDetectionDataset) -> DetectionDataset:
    """``yolo``: ``path`` = the ``data.yaml``, ``split`` picks its split; ``coco``: ``path`` = ``{"images": DIR,
    "annotations": FILE}`` (``{split}`` replaced). ``yolo``/``coco``: the classes to open them with (subclasses add
    what other tasks read, e.g. instance masks)."""
    if format == "yolo":
        return yolo(path_value(path, "the data.yaml"), split)
    if format == "coco":
        spec = path_spec(path, ("images", "annotations"), split)
        if not Path(spec["annotations"]).is_file():
            raise SplitNotFoundError(f"annotation file not found: {spec['annotations']}")
        return coco(spec["images"], spec["annotations"])
    raise ValueError(f"datasets of boxes are 'yolo' or 'coco', got {format!r}")
