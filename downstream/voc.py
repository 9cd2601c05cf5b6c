"""Pascal VOC XML detection sets as distributed (``format: voc`` of the detection task).

Two layouts, told apart by an ``Annotations/`` folder under the path:

* the devkit (``VOCdevkit/VOC2007``): ``ImageSets/Main/{split}.txt`` lists image ids, ``Annotations/{id}.xml`` their
  objects, ``JPEGImages/{id}.jpg`` the images;
* flat, an XML next to each image (DAWN and other small rain sets): ``path`` is the folder (``{split}`` replaced),
  ``x.jpg`` ↔ ``x.xml``; an image without its XML, or an XML without its image, is an error.

``path`` = that folder, or ``{root: FOLDER, classes: [names] or classes.txt}``. Classes: as given, else every
``<name>`` in every XML of the layout (all of ``Annotations/``, not only the split, so train and val agree), sorted
alphabetically; category ids are class index + 1.

Facts (the VOC devkit's ``VOCevaldet.m`` and the loaders built on it, e.g. detectron2 ``pascal_voc.py``): corners are
1-based inclusive pixels, so ``(xmin, ymin, xmax, ymax)`` is the xyxy box ``[xmin − 1, ymin − 1, xmax, ymax]``;
``difficult`` objects are ignored by the evaluator (neither targets nor misses, detections on them not false
positives): they are kept as ``iscrowd=1`` annotations (``record.annotations``), the role COCO's ``iscrowd`` plays
in pycocotools (as mmdetection's VOC-to-COCO conversion writes them), and :func:`downstream.metrics.voc_map` reads
them as the devkit's difficult flag. The scored ground truth holds the boxes unclipped (the COCO box ``[xmin − 1,
ymin − 1, xmax − xmin + 1, ymax − ymin + 1]``); the targets (training, drawing) are clipped to the image.
Every XML needs ``<size>`` with ``width`` and ``height`` equal to its image's.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from derain.imageio import is_image_file
from downstream.datasets import (
    DatasetError,
    DetectionDataset,
    ImageRecord,
    SplitNotFoundError,
    _check_box,
    _stack_boxes,
    box_annotation,
    name_under,
    path_value,
    read_classes,
    read_image_size,
    shared_labels,
)

DIFFICULT = {"0": False, "1": True, "false": False, "true": True}  # <difficult> as VOC tools write it, lower case


def read_voc_xml(path: Path) -> tuple[str, tuple[int, int], list[tuple[str, list[float], bool]]]:
    """``(filename, (h, w) of <size>, [(name, xyxy box, difficult)])`` of one annotation XML (box corners
    converted from 1-based inclusive pixels)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable XML: {exc}") from exc
    size = root.find("size")
    try:
        h, w = int(float(size.findtext("height"))), int(float(size.findtext("width")))  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: no <size> with <width> and <height>") from exc
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name, box = (obj.findtext("name") or "").strip(), obj.find("bndbox")
        try:
            x1, y1, x2, y2 = (float(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore
        except (AttributeError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: object #{k} ({name!r}) has no numeric <bndbox> xmin, ymin, xmax, "
                               "ymax") from exc
        if not name:
            raise DatasetError(f"{path}: object #{k} has no <name>")
        difficult = (obj.findtext("difficult") or "0").strip().lower()
        if difficult not in DIFFICULT:
            raise DatasetError(f"{path}: object #{k} ({name!r}): <difficult> must be 0 or 1 (or false/true), got "
                               f"{difficult!r}")
        objects.append((name, [x1 - 1, y1 - 1, x2, y2], DIFFICULT[difficult]))
    return (root.findtext("filename") or "").strip(), (h, w), objects


class VocDetectionDataset(DetectionDataset):
    """VOC XML boxes over their images (``pairs`` = ``[(image, xml)]``); the detection protocol of
    :mod:`downstream.datasets`, image ids = position + 1; scored with COCO's mAP and the devkit's AP."""

    protocols = ("coco", "voc")

    def __init__(self, pairs: list[tuple[Path, Path]], images_dir: Path, classes: list[str], source: str) -> None:
        index = {name: k for k, name in enumerate(classes)}
        records = []
        for i, (image, xml) in enumerate(pairs):
            _, size, objects = read_voc_xml(xml)
            if not image.is_file():
                raise DatasetError(f"{xml}: its image not found: {image}")
            h, w = read_image_size(image)
            if size != (h, w):
                raise DatasetError(f"{xml}: <size> says {size[1]}×{size[0]} but {image} is {w}×{h}")
            boxes, cls, scored = [], [], []
            for k, (name, box, difficult) in enumerate(objects):
                where = f"{xml}: object #{k}"
                if name not in index:
                    raise DatasetError(f"{where}: unknown class {name!r} (classes: {', '.join(classes)})")
                checked = _check_box(box, h, w, where)
                x1, y1, x2, y2 = box
                scored.append(box_annotation(i + 1, index[name] + 1, [x1, y1, x2 - x1, y2 - y1], iscrowd=difficult))
                if not difficult:
                    boxes.append(checked)
                    cls.append(index[name])
            records.append(ImageRecord(image, image.relative_to(images_dir).as_posix(), i + 1, h, w,
                                       _stack_boxes(boxes), np.array(cls, dtype=np.int64), annotations=scored))
        super().__init__(list(classes), list(range(1, len(classes) + 1)), images_dir, records, source)
        self.xmls = [xml for _, xml in pairs]

    def label_files(self, i: int) -> list[Path]:
        return [self.xmls[i]]  # what the bench fingerprints besides the image


def _devkit_pairs(root: Path, split: str) -> tuple[list[tuple[Path, Path]], Path, list[Path]]:
    """``(JPEGImages/{id}.jpg, Annotations/{id}.xml)`` of each id in ``ImageSets/Main/{split}.txt``: the image is the
    id's, as the devkit, detectron2 and torchvision read it (an XML's ``<filename>`` is not used: a stale one would
    put one image's boxes on another). Ids that leave their folder, or come twice, are refused naming the line."""
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_file.is_file():
        raise SplitNotFoundError(f"VOC split list not found: {ids_file}")
    images_dir = root / "JPEGImages"
    pairs, seen = [], {}
    for lineno, line in enumerate(ids_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        where = f"{ids_file}:{lineno}: id"
        if image_id in seen:
            raise DatasetError(f"{where} {image_id!r} listed twice (first at line {seen[image_id]}); its boxes would "
                               "be scored twice")
        seen[image_id] = lineno
        name_under(images_dir, image_id, where)  # an id is a file name in Annotations/ and JPEGImages/
        xml = root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            raise DatasetError(f"{ids_file}:{lineno}: annotation not found: {xml}")
        pairs.append((images_dir / f"{image_id}.jpg", xml))
    return pairs, images_dir, sorted((root / "Annotations").glob("*.xml"))


def _flat_pairs(folder: Path) -> tuple[list[tuple[Path, Path]], Path, list[Path]]:
    if not folder.is_dir():
        raise SplitNotFoundError(f"VOC folder not found: {folder}")
    images = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    xmls = sorted(folder.glob("*.xml"))
    stems = {p.stem for p in images}
    orphans = [x for x in xmls if x.stem not in stems]
    if orphans:
        raise DatasetError(f"annotation without its image: {orphans[0]} ({len(orphans)} in all)")
    unlabelled = [p for p in images if not p.with_suffix(".xml").is_file()]
    if unlabelled:
        raise DatasetError(f"image without its annotation XML: {unlabelled[0]} ({len(unlabelled)} in all)")
    shared_labels(images, lambda p: p.with_suffix(".xml"))
    return [(p, p.with_suffix(".xml")) for p in images], folder, xmls


def open_voc(path: Any, split: str = "val") -> VocDetectionDataset:
    """``path`` = a VOC devkit year folder or a flat folder of images and XMLs (``{split}`` replaced), or ``{root:
    that, classes: [names] or FILE}``."""
    spec = dict(path) if isinstance(path, Mapping) else {"root": path}
    unknown = sorted(set(spec) - {"root", "classes"})
    if unknown or "root" not in spec:
        raise ValueError(f"format voc: path must be a folder or {{root: FOLDER, classes: [...]}}, got {path!r}")
    root = path_value(spec["root"], "a VOC folder (path, or path.root)")
    root = Path(str(root).replace("{split}", split))
    if (root / "Annotations").is_dir():
        pairs, images_dir, all_xml = _devkit_pairs(root, split)
    else:
        pairs, images_dir, all_xml = _flat_pairs(root)
    if spec.get("classes") is not None:
        classes = read_classes(spec["classes"])
    else:
        classes = sorted({name for xml in all_xml for name, _, _ in read_voc_xml(xml)[2]})
        if not classes:
            raise DatasetError(f"{root}: no object in any XML to take class names from; give classes")
    return VocDetectionDataset(pairs, images_dir, classes, f"{root} [{split}]")
