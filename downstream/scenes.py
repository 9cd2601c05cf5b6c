"""Seeded labelled scenes: the offline default data set for the downstream benchmark and its tests.

Each scene is a crop of one of the colour photos scikit-image ships (random crop, flips, colour jitter) with
2–6 shaded, textured objects of ``OBJECT_CLASSES`` drawn on top, at 8–40% of the image side, possibly
rotated, partly out of frame and occluding one another (later objects cover earlier ones). Shapes are drawn
from signed distance functions: the image edge is anti-aliased, the mask is exactly the pixels whose centre
lies inside the topmost shape. Detection boxes are the tight boxes of each object's *visible* pixels; objects
more than ``MAX_HIDDEN`` hidden get no box (they stay in the segmentation masks). Instance masks are those visible
pixels, for the same objects as the boxes, written as polygons traced with ``cv2.findContours``:

- COCO: per visible part, the outline along pixel edges (pycocotools' convention), simplified with
  ``cv2.approxPolyDP`` at 0.5 px; holes (a ring's, an occluder's) are joined to their part by ultralytics'
  ``merge_multi_segment`` (a zero-width cut). Decoded with pycocotools they give back the visible pixels.
- YOLO: one polygon through the centres of the boundary pixels (no simplification beyond collinear runs), all
  parts and holes joined by ``merge_multi_segment`` as ultralytics' own COCO converter does. Rasterised the way
  ultralytics does (``cv2.fillPoly`` on truncated coordinates) it gives back the visible pixels plus the 1-px
  joining lines between separate parts; its box (the polygon's extent, as ultralytics derives boxes) runs from
  the first to the last pixel centre, half a pixel inside the detection box on each side.

Layout written by :func:`generate_scenes` under ``OUT``::

    det/data.yaml                            ultralytics layout, names = OBJECT_CLASSES (ids 0..5), no 'path'
    det/images/{train,val}/scene_NNNNN.png
    det/labels/{train,val}/scene_NNNNN.txt   'cls cx cy w h' normalised (empty file = no boxes)
    det/annotations/instances_{train,val}.json   COCO JSON of the same images (file_name relative to
                                             det/images/{split}; image id = index+1 in name order,
                                             category id = class index + 1; bbox in integer pixels)
    seg/classes.txt                          SEG_CLASSES: background first (id 0), then the objects (1..6)
    seg/{train,val}/images/scene_NNNNN.png   same pixels as det/images
    seg/{train,val}/masks/scene_NNNNN.png    uint8 class ids
    inst/data.yaml                           as det/data.yaml, for the YOLO-seg labels below
    inst/images/{train,val}/scene_NNNNN.png  same pixels as det/images
    inst/labels/{train,val}/scene_NNNNN.txt  'cls x1 y1 ... xn yn' normalised polygons (YOLO-seg)
    inst/annotations/instances_{train,val}.json  COCO JSON with polygon 'segmentation' (ids as in det/; bbox as
                                             det's, area = visible pixel count)

Determinism: scene ``i`` depends only on ``(seed, i, size)``; the train/val split only on ``(seed, n,
val_fraction)``. Same arguments → byte-identical files (``det/`` and ``seg/`` are the same as before ``inst/`` was
added: the instance copy only reads what rendering computes anyway).
"""

from __future__ import annotations

import colorsys
import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from derain.imageio import quantize_uint8, write_image
from derain.samples import sample_photos

OBJECT_CLASSES = ("disc", "square", "triangle", "ring", "cross", "star")
SEG_CLASSES = ("background", *OBJECT_CLASSES)
SCALE_RANGE = (0.08, 0.40)  # object extent as a fraction of the image side
OBJECTS_PER_IMAGE = (2, 6)
MAX_HIDDEN = 0.6  # objects hidden more than this get no detection box
TEXTURES = ("flat", "stripes", "checker", "noise", "rings")


# ----------------------------------------------------------------------------------------------- shapes


def _polygon(kind: str) -> np.ndarray:
    """Vertices (K×2, counter-clockwise) of a shape of circumradius ~1."""
    if kind == "square":
        return np.array([[-0.75, -0.75], [0.75, -0.75], [0.75, 0.75], [-0.75, 0.75]])
    if kind == "triangle":
        a = np.deg2rad([90.0, 210.0, 330.0])
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "star":
        a = np.deg2rad(90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([rad * np.cos(a), rad * np.sin(a)], 1)
    if kind == "cross":
        t, s = 0.3, 0.95
        return np.array([[t, -s], [t, -t], [s, -t], [s, t], [t, t], [t, s], [-t, s], [-t, t], [-s, t], [-s, -t],
                         [-t, -t], [-t, -s]])
    raise ValueError(f"no polygon for {kind!r}")


def _polygon_sdf(x: np.ndarray, y: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from points to a closed polygon, same units as the inputs."""
    dist = np.full(x.shape, np.inf)
    inside = np.zeros(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, np.roll(verts, -1, axis=0), strict=True):
        ex, ey, wx, wy = x1 - x0, y1 - y0, x - x0, y - y0
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(wx - ex * t, wy - ey * t))
        crosses = ((y0 > y) != (y1 > y)) & (x < x0 + (y - y0) * ex / (ey if ey != 0 else 1e-12))
        inside ^= crosses
    return np.where(inside, -dist, dist)


def shape_sdf(kind: str, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance in pixels to shape ``kind`` of circumradius ``radius`` centred at the origin."""
    if kind == "disc":
        return np.hypot(x, y) - radius
    if kind == "ring":
        return np.abs(np.hypot(x, y) - 0.7 * radius) - 0.3 * radius
    return _polygon_sdf(x / radius, y / radius, _polygon(kind)) * radius


# ----------------------------------------------------------------------------------------------- drawing


@dataclass
class SceneObject:
    """One drawn object: class index (into OBJECT_CLASSES) and its pixel count inside the image."""

    cls: int
    area: int


@functools.lru_cache(maxsize=1)
def _photos_uint8() -> tuple[Image.Image, ...]:
    """The packaged sample photos as uint8 PIL images (cached; sorted by name for determinism)."""
    photos = sample_photos(min_size=64)
    return tuple(Image.fromarray(quantize_uint8(photos[k])) for k in sorted(photos))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop of a sample photo, resized to ``size``, flipped and colour-jittered (H×W×3 float)."""
    photos = _photos_uint8()
    photo = photos[rng.integers(len(photos))]
    w, h = photo.size
    side = int(min(w, h) * rng.uniform(0.3, 1.0))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
    img = np.asarray(crop, dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.2:
        img = img[::-1]
    gray = img.mean(axis=2, keepdims=True)
    img = gray + (img - gray) * rng.uniform(0.5, 1.3)  # saturation
    img = (img - img.mean()) * rng.uniform(0.7, 1.2) + img.mean()  # contrast
    img = img * rng.uniform(0.75, 1.2) * rng.uniform(0.92, 1.08, size=3)  # brightness, white balance
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _colour(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.3, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def _texture(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Object appearance at local coordinates ``u, v`` in [-1, 1]-ish: pattern × shading, H×W×3 in [0, 1]."""
    c1, c2 = _colour(rng), _colour(rng)
    kind = TEXTURES[rng.integers(len(TEXTURES))]
    freq = rng.uniform(2.0, 6.0)
    if kind == "stripes":
        w = (np.sin(np.pi * freq * u) > 0).astype(np.float32)
    elif kind == "checker":
        w = ((np.floor(freq * u / 2) + np.floor(freq * v / 2)) % 2).astype(np.float32)
    elif kind == "noise":
        w = rng.random(u.shape).astype(np.float32) * 0.5
    elif kind == "rings":
        w = (np.sin(np.pi * freq * np.hypot(u, v)) > 0).astype(np.float32)
    else:
        w = np.zeros(u.shape, np.float32)
    a = rng.uniform(0, 2 * np.pi)
    shading = 1.0 + rng.uniform(0.1, 0.45) * (np.cos(a) * u + np.sin(a) * v)  # light from one side
    tex = (c1 * (1 - w[..., None]) + c2 * w[..., None]) * shading[..., None]
    return np.clip(tex, 0.0, 1.0).astype(np.float32)


def _draw_object(img: np.ndarray, inst: np.ndarray, seg: np.ndarray, index: int, rng: np.random.Generator
                 ) -> SceneObject:
    """Draw one random object into ``img`` (anti-aliased), ``inst`` (instance index) and ``seg`` (class + 1)."""
    size = img.shape[0]
    cls = int(rng.integers(len(OBJECT_CLASSES)))
    radius = rng.uniform(*SCALE_RANGE) * size / 2
    cx, cy = rng.uniform(0.7 * radius, size - 0.7 * radius, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    pad = 0.3 * radius + 2
    x0, x1 = max(int(cx - radius - pad), 0), min(int(np.ceil(cx + radius + pad)) + 1, size)
    y0, y1 = max(int(cy - radius - pad), 0), min(int(np.ceil(cy + radius + pad)) + 1, size)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5  # pixel centres
    ca, sa = np.cos(angle), np.sin(angle)

    def local(dx: float = 0.0, dy: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        px, py = xx - cx - dx, yy - cy - dy
        return ca * px + sa * py, -sa * px + ca * py

    region = img[y0:y1, x0:x1]
    if rng.random() < 0.6:  # soft drop shadow, offset down-right
        off, blur = rng.uniform(0.04, 0.12) * radius + 1, 0.15 * radius + 1
        shadow = np.clip(0.5 - shape_sdf(OBJECT_CLASSES[cls], *local(off, off), radius) / blur, 0, 1)
        region *= (1 - rng.uniform(0.25, 0.5) * shadow)[..., None].astype(np.float32)
    u, v = local()
    sdf = shape_sdf(OBJECT_CLASSES[cls], u, v, radius)
    cover = np.clip(0.5 - sdf, 0.0, 1.0)[..., None].astype(np.float32)
    region[:] = region * (1 - cover) + _texture(rng, u / radius, v / radius) * cover
    inside = sdf < 0
    inst[y0:y1, x0:x1][inside] = index
    seg[y0:y1, x0:x1][inside] = cls + 1
    return SceneObject(cls, int(inside.sum()))


def render_scene(seed: int, index: int, size: int = 320) -> tuple[np.ndarray, np.ndarray, list[tuple[int, list[int]]]]:
    """Scene ``index`` of run ``seed``.

    Returns the image (H×W×3 float32 in [0, 1]), the segmentation mask (H×W uint8, 0 = background, class + 1
    for objects) and the detection labels ``[(class, [x0, y0, x1, y1]), ...]`` in integer pixel edges (x1, y1
    exclusive) of each object's visible pixels, heavily occluded objects left out.
    """
    img, seg, labels, _ = render_scene_instances(seed, index, size)
    return img, seg, labels


def render_scene_instances(seed: int, index: int, size: int = 320
                           ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, list[int]]], np.ndarray]:
    """:func:`render_scene` plus the labelled objects' visible pixels: bool N×H×W, one mask per label."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, size)
    inst = np.full((size, size), -1, dtype=np.int32)
    seg = np.zeros((size, size), dtype=np.uint8)
    objects = [_draw_object(img, inst, seg, k, rng) for k in range(rng.integers(OBJECTS_PER_IMAGE[0],
                                                                                  OBJECTS_PER_IMAGE[1] + 1))]
    img = np.clip(img + rng.normal(0, rng.uniform(0, 0.02), img.shape), 0, 1).astype(np.float32)  # sensor noise
    labels, visible = [], []
    for k, obj in enumerate(objects):
        ys, xs = np.nonzero(inst == k)
        if obj.area == 0 or len(xs) < (1 - MAX_HIDDEN) * obj.area or len(xs) < 4:
            continue
        labels.append((obj.cls, [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]))
        visible.append(inst == k)
    masks = np.stack(visible) if visible else np.zeros((0, size, size), dtype=bool)
    return img, seg, labels, masks


# ----------------------------------------------------------------------------------------------- polygons


def _outlines(mask: np.ndarray, pixel_edges: bool) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Each visible part of ``mask`` (H×W bool) as (outer contour, [hole contours]), K×2 float (x, y) arrays.

    ``pixel_edges=False``: through the centres of the boundary pixels (pixel ``i`` at ``i + 0.5``).
    ``pixel_edges=True``: along the pixel edges (pixel ``i`` spans ``[i, i + 1]``), traced on the mask upsampled
    ×2, where the boundary sub-pixels ``2i`` and ``2i + 1`` map to the edges ``i`` and ``i + 1``.
    Parts are sorted by area, largest first.
    """
    import cv2

    m = mask.astype(np.uint8)
    if pixel_edges:
        m = np.kron(m, np.ones((2, 2), np.uint8))
    contours, hierarchy = cv2.findContours(np.pad(m, 1), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    points = []
    for c in contours:
        p = c.reshape(-1, 2).astype(np.float64) - 1  # undo the padding
        if pixel_edges:
            p = (p + 1) // 2
            p = p[np.r_[True, np.any(p[1:] != p[:-1], axis=1)]]  # drop repeated corners
            simple = cv2.approxPolyDP(p.astype(np.float32).reshape(-1, 1, 2), 0.5, True).reshape(-1, 2)
            p = simple.astype(np.float64) if len(simple) >= 3 else p
        else:
            p = p + 0.5
        points.append(p)
    parents = hierarchy[0][:, 3] if len(contours) else []
    parts = [(points[i], [points[j] for j in range(len(points)) if parents[j] == i])
             for i in range(len(points)) if parents[i] < 0]
    return sorted(parts, key=lambda part: -cv2.contourArea(part[0].astype(np.float32)))


def _merge(segments: list[np.ndarray]) -> np.ndarray:
    """Join polygons into one (K×2) at their closest points with ultralytics' ``merge_multi_segment``."""
    if len(segments) == 1:
        return segments[0]
    from downstream.detection import offline_ultralytics

    offline_ultralytics()
    from ultralytics.data.converter import merge_multi_segment

    return np.concatenate(merge_multi_segment([s.reshape(-1) for s in segments]), axis=0)


def coco_polygons(mask: np.ndarray) -> list[list[int]]:
    """COCO ``segmentation`` polygons (pixel-edge corners, integers) of ``mask``'s visible parts, holes joined."""
    return [_merge([outer, *holes]).astype(int).reshape(-1).tolist() for outer, holes in _outlines(mask, True)]


def yolo_polygon(mask: np.ndarray) -> np.ndarray:
    """One polygon (K×2 pixel coordinates) for a YOLO-seg label of ``mask``: through boundary pixel centres, parts
    and holes joined. A mask one pixel thin (whose centre polygon would have no extent or fewer than 3 points) gets
    its pixel-edge outline instead.
    """
    xy = _merge([s for outer, holes in _outlines(mask, False) for s in (outer, *holes)])
    if len(xy) < 3 or np.ptp(xy, axis=0).min() == 0:
        xy = _merge([s for outer, holes in _outlines(mask, True) for s in (outer, *holes)])
    return xy


# ----------------------------------------------------------------------------------------------- writing


def split_indices(n: int, val_fraction: float, seed: int) -> dict[str, list[int]]:
    """Seeded train/val split of ``range(n)``, each split non-empty and sorted."""
    if n < 2:
        raise ValueError(f"need at least 2 scenes (one per split), got n={n}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    perm = np.random.default_rng([seed, 2**31]).permutation(n)
    val = sorted(int(i) for i in perm[:n_val])
    return {"train": sorted(set(range(n)) - set(val)), "val": val}


def _yolo_line(cls: int, box: list[int], size: int) -> str:
    x0, y0, x1, y1 = box
    return f"{cls} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"


def _coco_json(entries: list[tuple[str, list[tuple[int, list[int]]]]], size: int) -> dict[str, Any]:
    images, anns = [], []
    for image_id, (file_name, labels) in enumerate(entries, 1):
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for cls, (x0, y0, x1, y1) in labels:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cls + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    cats = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(OBJECT_CLASSES)]
    return {"info": {"description": "derainbench synthetic scenes"}, "images": images, "annotations": anns,
            "categories": cats}


def _prepare(out: Path, overwrite: bool) -> None:
    for sub in (out / "det", out / "seg", out / "inst"):
        if sub.exists() and any(sub.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{sub} exists and is not empty (use overwrite=True / --overwrite)")
            shutil.rmtree(sub)


def generate_scenes(out_dir: str | Path, n: int = 200, size: int = 320, seed: int = 0, val_fraction: float = 0.25,
                    progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Write ``n`` labelled scenes of ``size``×``size`` px under ``out_dir`` (layout in the module docstring).

    Returns a summary: paths (``det_yaml``, ``coco_json`` per split, ``seg_root``, ``inst_yaml``,
    ``inst_coco_json`` per split), ``names``, ``seg_classes``, ``images`` and ``boxes`` per split (each box has an
    instance). Existing non-empty ``det/``/``seg/``/``inst/`` folders are an error unless ``overwrite`` (then they
    are removed first, so no stale files remain).
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    out = Path(out_dir)
    splits = split_indices(n, val_fraction, seed)
    _prepare(out, overwrite)
    det, seg, inst = out / "det", out / "seg", out / "inst"
    split_of = {i: s for s, idx in splits.items() for i in idx}
    entries: dict[str, list[tuple[str, list[tuple[int, list[int]]]]]] = {"train": [], "val": []}
    instances: dict[str, list[list[tuple[list[list[int]], int]]]] = {"train": [], "val": []}  # (polygons, area)
    for i in tqdm(range(n), desc="scenes", unit="img", disable=not progress):
        split, name = split_of[i], f"scene_{i:05d}"
        img, mask, labels, visible = render_scene_instances(seed, i, size)
        write_image(det / "images" / split / f"{name}.png", img)
        (det / "labels" / split).mkdir(parents=True, exist_ok=True)
        (det / "labels" / split / f"{name}.txt").write_text("".join(_yolo_line(c, b, size) + "\n" for c, b in labels))
        (seg / split / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(det / "images" / split / f"{name}.png", seg / split / "images" / f"{name}.png")
        (seg / split / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(seg / split / "masks" / f"{name}.png")
        entries[split].append((f"{name}.png", labels))
        _write_instances(inst, split, name, labels, visible, size)
        instances[split].append([(coco_polygons(m), int(m.sum())) for m in visible])
    return _write_metadata(out, entries, size, n, seed, instances)


def _write_instances(inst: Path, split: str, name: str, labels: list[tuple[int, list[int]]], visible: np.ndarray,
                     size: int) -> None:
    """The scene's image (copied from det/) and YOLO-seg label file under ``inst``."""
    (inst / "images" / split).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(inst.parent / "det" / "images" / split / f"{name}.png", inst / "images" / split / f"{name}.png")
    (inst / "labels" / split).mkdir(parents=True, exist_ok=True)
    lines = [f"{cls} " + " ".join(f"{v:.6f}" for v in (yolo_polygon(m) / size).reshape(-1)) + "\n"
             for (cls, _), m in zip(labels, visible, strict=True)]
    (inst / "labels" / split / f"{name}.txt").write_text("".join(lines))


def _coco_instances_json(entries: list[tuple[str, list[tuple[int, list[int]]]]],
                         instances: list[list[tuple[list[list[int]], int]]], size: int) -> dict[str, Any]:
    """The det/ COCO JSON of these scenes plus each object's polygon ``segmentation`` and visible pixel ``area``."""
    data = _coco_json(entries, size)
    for ann, (polygons, area) in zip(data["annotations"], [x for scene in instances for x in scene], strict=True):
        ann["segmentation"], ann["area"] = polygons, area
    return data


def _write_metadata(out: Path, entries: dict[str, list[Any]], size: int, n: int, seed: int,
                    instances: dict[str, list[Any]]) -> dict[str, Any]:
    det, seg, inst = out / "det", out / "seg", out / "inst"
    header = f"# derainbench scenes: n={n} size={size} seed={seed}; paths relative to this file's folder\n"
    body = {"train": "images/train", "val": "images/val", "nc": len(OBJECT_CLASSES), "names": list(OBJECT_CLASSES)}
    (det / "data.yaml").write_text(header + yaml.safe_dump(body, sort_keys=False))
    (det / "annotations").mkdir(parents=True, exist_ok=True)
    coco = {}
    for split, items in entries.items():
        coco[split] = det / "annotations" / f"instances_{split}.json"
        coco[split].write_text(json.dumps(_coco_json(items, size)) + "\n")
    (seg / "classes.txt").write_text("".join(f"{c}\n" for c in SEG_CLASSES))
    (inst / "data.yaml").write_text(header + yaml.safe_dump(body, sort_keys=False))
    (inst / "annotations").mkdir(parents=True, exist_ok=True)
    inst_coco = {}
    for split, items in entries.items():
        inst_coco[split] = inst / "annotations" / f"instances_{split}.json"
        inst_coco[split].write_text(json.dumps(_coco_instances_json(items, instances[split], size)) + "\n")
    return {
        "root": out, "det_yaml": det / "data.yaml", "coco_json": coco, "seg_root": seg,
        "inst_yaml": inst / "data.yaml", "inst_coco_json": inst_coco,
        "names": list(OBJECT_CLASSES), "seg_classes": list(SEG_CLASSES),
        "images": {s: len(v) for s, v in entries.items()},
        "boxes": {s: sum(len(labels) for _, labels in v) for s, v in entries.items()},
    }
