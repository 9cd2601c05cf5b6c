"""BDD100K detection as distributed (``format: bdd100k`` of the detection task): the Scalabel JSON of ``det_20``.

``path`` = ``{labels: .../labels/det_20/det_{split}.json, images: .../images/100k/{split}, where: {weather:
rainy}}`` (``{split}`` replaced; ``where`` optional). The JSON is a list of frames ``{"name": "b1c66a42-6f7d68ca.jpg",
"attributes": {"weather", "scene", "timeofday"}, "labels": [{"category", "box2d": {x1, y1, x2, y2}, "attributes":
{...}}]}``; the legacy 2018 files (``bdd100k_labels_images_{split}.json``) have the same fields.

Facts (BDD100K ``doc/source/format.rst`` and ``bdd100k/configs/det.toml``, scalabel ``label/transforms.py`` and
``label/to_coco.py``, all at their GitHub HEAD):

* the 10 evaluated classes, category ids 1..10: :data:`CLASSES`;
* legacy names mapped (``det.toml`` ``name_mapping``): person → pedestrian, bike → bicycle, motor → motorcycle,
  caravan → car, van → car;
* the ignored categories (``det.toml`` ``ignored_mapping``: other person → pedestrian, other vehicle → car,
  trailer → truck) and labels with ``attributes.crowd`` become ``iscrowd=1`` annotations of the mapped class, as
  the official COCO conversion writes them (bdd100k ``label/to_scalabel.py`` sets ``attributes.ignored``, scalabel
  ``scalabel2coco_detection`` writes ``iscrowd = crowd or ignored``): not targets, but scored as crowd regions;
* ``box2d`` corners are **inclusive** pixel coordinates: scalabel's ``box2d_to_bbox`` gives the COCO box
  ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]``, never clipped: that box (also beyond the image border) is what the
  scored ground truth holds (``record.annotations``); the target (training, drawing) is the xyxy box
  ``[x1, y1, x2 + 1, y2 + 1]`` clipped to the image;
* scalabel's detection eval (``scalabel/eval/detect.py``, ``evaluate_det``) is pycocotools' ``COCOeval`` over these
  annotations (its own image numbering after sorting frames by name does not change a number), which the bench's
  COCO scoring reproduces;
* labels without ``box2d`` (lanes, drivable areas: ``poly2d``) are not boxes and are not read; a label with a
  box and any other category is an error naming the file and frame.

``where`` selects frames by their attributes (a value or a list of values each; values as in ``format.rst``), so one
config can bench the rainy frames (``real_rain``) next to the clear ones with the same detector. Image ids are the
frame's position in the JSON + 1 (a subset keeps them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from downstream.datasets import (
    DatasetError,
    DetectionDataset,
    ImageRecord,
    SplitNotFoundError,
    _check_box,
    _stack_boxes,
    box_annotation,
    listed_twice,
    name_under,
    path_value,
    read_image_size,
    read_json_file,
)

CLASSES: tuple[str, ...] = ("pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
                            "traffic light", "traffic sign")
LEGACY_NAMES = {"person": "pedestrian", "bike": "bicycle", "motor": "motorcycle", "caravan": "car", "van": "car"}
IGNORED = {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "weather": ("rainy", "snowy", "clear", "overcast", "undefined", "partly cloudy", "foggy"),
    "scene": ("tunnel", "residential", "parking lot", "undefined", "city street", "gas stations", "highway"),
    "timeofday": ("daytime", "night", "dawn/dusk", "undefined"),
}


def scalabel_box(box2d: Any, where: str) -> list[float]:
    """Scalabel ``box2d`` ``{x1, y1, x2, y2}`` (inclusive corners) → xyxy with exclusive right/bottom edges."""
    try:
        x1, y1, x2, y2 = (float(box2d[k]) for k in ("x1", "y1", "x2", "y2"))
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: box2d must be {{x1, y1, x2, y2}}, got {box2d!r}") from exc
    return [x1, y1, x2 + 1, y2 + 1]


def check_where(where: Any) -> dict[str, tuple[str, ...]]:
    """``{attribute: value or [values]}`` → ``{attribute: values}``; unknown attributes or values are errors."""
    if where is None:
        return {}
    if not isinstance(where, Mapping):
        raise DatasetError(f"where must map frame attributes to values, e.g. {{weather: rainy}}; got {where!r}")
    out = {}
    for key, value in where.items():
        if key not in ATTRIBUTES:
            raise DatasetError(f"where: unknown frame attribute {key!r}; BDD100K has {', '.join(ATTRIBUTES)}")
        values = tuple(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        unknown = [v for v in values if v not in ATTRIBUTES[key]]
        if unknown or not values:
            raise DatasetError(f"where: {key} {unknown or values!r} not among {', '.join(ATTRIBUTES[key])}")
        out[str(key)] = values
    return out


def selects_rain(path: Any) -> bool:
    """Whether a bdd100k ``path``'s ``where`` keeps rainy frames (``weather: rainy``, alone or among others): their
    images are real rain, which a bench dataset must say with ``real_rain``."""
    where = path.get("where") if isinstance(path, Mapping) else None
    weather = where.get("weather") if isinstance(where, Mapping) else None
    return "rainy" in (weather if isinstance(weather, (list, tuple)) else [weather])


class Bdd100kDetectionDataset(DetectionDataset):
    """The frames of a BDD100K detection JSON (optionally those whose attributes match ``where``) over the images in
    ``images_dir``; the detection protocol of :mod:`downstream.datasets`, classes :data:`CLASSES` with category ids
    1..10."""

    def __init__(self, labels_json: str | Path, images_dir: str | Path, where: Any = None) -> None:
        self.labels_json, self.images_dir = Path(labels_json), Path(images_dir)
        self.where = check_where(where)
        frames = _load_frames(self.labels_json)
        twice = listed_twice([str(f.get("name")) for f in frames])
        if twice:  # its boxes would be scored twice
            raise DatasetError(f"{self.labels_json}: frame(s) listed twice: {', '.join(twice[:10])}")
        if not self.images_dir.is_dir():
            raise DatasetError(f"BDD100K images folder not found: {self.images_dir}")
        records = [self._record(k, frame) for k, frame in enumerate(frames) if self._selected(frame)]
        what = f"{self.labels_json}" + (f" where {self.where}" if self.where else "")
        super().__init__(list(CLASSES), list(range(1, len(CLASSES) + 1)), self.images_dir, records, what)
        self.index_files = (self.labels_json,)  # what the bench fingerprints besides the images

    def _selected(self, frame: Mapping[str, Any]) -> bool:
        attributes = frame.get("attributes") or {}
        if not isinstance(attributes, Mapping):
            raise DatasetError(f"{self.labels_json}: frame {frame.get('name')!r}: attributes must be an object "
                               f"{{weather, scene, timeofday}}, got {attributes!r}")
        return all(attributes.get(key) in values for key, values in self.where.items())

    def _record(self, k: int, frame: Mapping[str, Any]) -> ImageRecord:
        name = frame.get("name")
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{self.labels_json}: frame #{k} has no image name")
        path = name_under(self.images_dir, name, f"{self.labels_json}: frame #{k} name")
        if not path.is_file():
            raise DatasetError(f"{self.labels_json}: image {name!r} not found: {path}")
        h, w = read_image_size(path)
        boxes, classes, scored = [], [], []
        labels = frame.get("labels") or []
        if not isinstance(labels, list):
            raise DatasetError(f"{self.labels_json}: frame {name!r}: labels must be a list, got {labels!r}")
        for j, label in enumerate(labels):
            where = f"{self.labels_json}: frame {name!r} label #{j}"
            if not isinstance(label, Mapping):
                raise DatasetError(f"{where} must be an object {{category, box2d, attributes}}, got {label!r}")
            if not isinstance(label.get("attributes") or {}, Mapping):
                raise DatasetError(f"{where} attributes must be an object, got {label['attributes']!r}")
            if label.get("box2d") is None:
                continue  # lanes and drivable areas (poly2d) in the legacy files
            category = str(label.get("category"))
            category = LEGACY_NAMES.get(category, category)
            ignored = category in IGNORED
            category = IGNORED.get(category, category)
            if category not in CLASSES:
                raise DatasetError(f"{where}: unknown category {label.get('category')!r} (BDD100K detection: "
                                   f"{', '.join(CLASSES)}, legacy {', '.join(LEGACY_NAMES)}, ignored "
                                   f"{', '.join(IGNORED)})")
            corners = scalabel_box(label["box2d"], where)
            box = _check_box(corners, h, w, where)
            cls = CLASSES.index(category)
            crowd = ignored or bool((label.get("attributes") or {}).get("crowd", False))
            x1, y1, x2, y2 = corners  # scalabel's bbox, unclipped: [x1, y1, x2 - x1 + 1, y2 - y1 + 1]
            scored.append(box_annotation(k + 1, cls + 1, [x1, y1, x2 - x1, y2 - y1], iscrowd=crowd))
            if crowd:
                continue
            boxes.append(box)
            classes.append(cls)
        return ImageRecord(path, name, k + 1, h, w, _stack_boxes(boxes), np.array(classes, dtype=np.int64),
                           annotations=scored)


def _load_frames(path: Path) -> list[dict[str, Any]]:
    data = read_json_file(path, "BDD100K label file")
    if isinstance(data, Mapping) and isinstance(data.get("frames"), list):  # scalabel's {frames, config} dataset
        data = data["frames"]
    if not isinstance(data, list) or not all(isinstance(f, Mapping) for f in data):
        raise DatasetError(f"{path}: a BDD100K label file is a list of frames {{name, attributes, labels}}")
    return data


def open_bdd100k(path: Any, split: str = "val") -> Bdd100kDetectionDataset:
    """``path`` = ``{labels: FILE, images: DIR, where: {attribute: value(s)}}`` (``{split}`` replaced in both)."""
    if not isinstance(path, Mapping) or "labels" not in path or "images" not in path:
        raise ValueError("format bdd100k: path must be {labels: .../det_20/det_{split}.json, images: "
                         f".../images/100k/{{split}}, where: {{weather: rainy}} (optional)}}, got {path!r}")
    unknown = sorted(set(path) - {"labels", "images", "where"})
    if unknown:
        raise ValueError(f"format bdd100k: unknown path keys {unknown} (labels, images, where)")
    labels, images = (str(path_value(path[k], f"a {k} path (path.{k})")).replace("{split}", split)
                      for k in ("labels", "images"))
    if not Path(labels).is_file():
        raise SplitNotFoundError(f"BDD100K label file not found: {labels}")
    return Bdd100kDetectionDataset(labels, images, path.get("where"))
