"""Instance segmentation with ultralytics YOLO-seg models: datasets, model adapter, training loss and evaluator.

Instance protocol = the detection protocol of :mod:`downstream.datasets` plus masks::

    ds.names, ds.category_ids, ds.image_ids, ds.images_dir, len(ds), ds.image_path(i), ds.image_size(i),
    ds.with_images_dir(dir)
    ds[i]          (image H×W×3 float32 RGB in [0, 1],
                    {"boxes": float32 N×4 xyxy px, "classes": int64 N, "masks": bool N×H×W})
    ds.masks(i)    bool N×H×W, decoded from the labels without reading the image

Two formats: :class:`YoloInstanceDataset` (ultralytics' YOLO-seg layout, polygon lines ``cls x1 y1 … xn yn``
normalised) and :class:`CocoInstanceDataset` (COCO JSON whose ``segmentation`` is polygons or RLE). Polygons and RLEs
stay in the records; masks are decoded when an image is asked for. :func:`to_coco_instances` writes the COCO ground
truth for ``coco_map(..., iou_type="segm")`` (and ``"bbox"``).

Models: :func:`load_instance_segmenter` (a ``-seg`` model ``.yaml`` or a local ``.pt``; nothing is downloaded) gives
an :class:`InstanceSegmenter`, a :class:`~downstream.detection.Detector` whose ``predict`` also returns masks at the
input resolution, built the way ultralytics' ``SegmentationValidator`` builds the masks it scores. Training:
``downstream.detection.train_detector(..., task="segment")``. :class:`InstanceSegmentationLoss` is ultralytics'
segmentation training loss, differentiable w.r.t. the images (joint deraining fine-tuning), and
:class:`InstanceEvaluator` scores mask and box mAP with pycocotools.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from downstream.datasets import (
    CocoDetectionDataset,
    DatasetError,
    ImageRecord,
    YoloDetectionDataset,
    _check_box,
    _parse_yolo_line,
    _stack_boxes,
    read_image_size,
    to_coco_dict,
    yolo_label_path,
)
from downstream.detection import (
    DetectionTask,
    Detector,
    DetectorRecipe,
    _names_list,
    check_model_yaml,
    class_count_check,
    crop_boxes,
    detections_to_input,
    letterbox,
    load_detector,
    offline_ultralytics,
)
from downstream.metrics import DetectionEvaluator, coco_map, masks_to_rle
from downstream.task_losses import DetectionLoss
from downstream.tasks import MetricSpec, register_task

MASK_CHUNK_PIXELS = 16_000_000  # masks resampled to the input size per chunk, bounding the float intermediate


# ----------------------------------------------------------------------------------------------- datasets


@dataclass
class InstanceRecord(ImageRecord):
    """An :class:`ImageRecord` plus one segment per target (same order as ``boxes``), decoded on demand.

    YOLO: a float64 K×2 polygon in absolute pixels. COCO: the annotation's ``segmentation`` (polygons or RLE).
    """

    segments: list[Any] = field(default_factory=list)


def polygon_mask(polygon: np.ndarray, h: int, w: int) -> np.ndarray:
    """Rasterise a K×2 pixel polygon to a bool ``h×w`` mask exactly as ultralytics does for its training and
    validation targets (``ultralytics.data.utils.polygon2mask``: coordinates truncated to int, ``cv2.fillPoly``,
    boundary pixels included)."""
    offline_ultralytics()
    from ultralytics.data.utils import polygon2mask

    return polygon2mask((h, w), [np.asarray(polygon, dtype=np.float64).reshape(-1)]).astype(bool)


def coco_segment_mask(segmentation: Any, h: int, w: int) -> np.ndarray:
    """Decode a COCO ``segmentation`` (polygon list, uncompressed or compressed RLE) to a bool ``h×w`` mask with
    pycocotools (polygons of one object are merged, as COCOeval does)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


class _InstanceMasks:
    """Adds masks to a detection dataset whose records are :class:`InstanceRecord` (mixin, listed first)."""

    records: list[InstanceRecord]

    def _decode(self, segment: Any, h: int, w: int) -> np.ndarray:
        raise NotImplementedError

    def masks(self, i: int) -> np.ndarray:
        """Image ``i``'s instance masks, bool ``N×H×W`` (N = number of boxes), decoded from the labels."""
        r = self.records[i]
        if not r.segments:
            return np.zeros((0, r.height, r.width), dtype=bool)
        return np.stack([self._decode(s, r.height, r.width) for s in r.segments])

    def target(self, i: int) -> dict[str, np.ndarray]:
        """``{"boxes": float32 N×4 xyxy px, "classes": int64 N, "masks": bool N×H×W}``."""
        t = super().target(i)  # type: ignore[misc]
        t["masks"] = self.masks(i)
        return t


def read_yolo_segments(label_path: Path, n_classes: int, h: int, w: int
                       ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Boxes (float32 N×4 xyxy px, the polygons' extents clipped to the image), classes (int64 N) and polygons
    (float64 K×2 px) of one YOLO-seg label file; a missing file is no instances, a box-only line an error."""
    boxes, classes, polygons = [], [], []
    if label_path.is_file():
        for lineno, line in enumerate(label_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{label_path}:{lineno}"
            n = len(line.split())
            if n == 5:
                raise DatasetError(f"{where}: box-only line 'cls cx cy w h'; instance segmentation needs polygon "
                                   "lines 'cls x1 y1 x2 y2 ... xn yn' (normalised, at least 3 points)")
            if n < 7 or n % 2 == 0:
                raise DatasetError(f"{where}: expected 'cls x1 y1 x2 y2 ... xn yn' (a class and at least 3 points), "
                                   f"got {n} values: {line!r}")
            cls, nbox = _parse_yolo_line(line, where, n_classes)
            boxes.append(_check_box(nbox * np.array([w, h, w, h]), h, w, where))
            classes.append(cls)
            polygons.append(np.array([float(v) for v in line.split()[1:]]).reshape(-1, 2) * [w, h])
    return _stack_boxes(boxes), np.array(classes, dtype=np.int64), polygons


class YoloInstanceDataset(_InstanceMasks, YoloDetectionDataset):
    """Ultralytics' YOLO-seg layout: a ``data.yaml`` as for :class:`~downstream.datasets.YoloDetectionDataset`,
    label lines ``cls x1 y1 x2 y2 ... xn yn`` (a normalised polygon of at least 3 points).

    Boxes are the polygons' extents (as ultralytics derives them); masks are rasterised at the image size with
    ultralytics' own ``polygon2mask`` (see :func:`polygon_mask`), so they are the pixels ultralytics trains on.
    """

    @staticmethod
    def _record(path: Path, index: int, images_dir: Path, n_classes: int) -> InstanceRecord:
        if not path.is_file():
            raise DatasetError(f"image listed but not found: {path}")
        h, w = read_image_size(path)
        boxes, classes, polygons = read_yolo_segments(yolo_label_path(path), n_classes, h, w)
        rel = path.relative_to(images_dir).as_posix()
        return InstanceRecord(path, rel, index + 1, h, w, boxes, classes, segments=polygons)

    def _decode(self, segment: Any, h: int, w: int) -> np.ndarray:
        return polygon_mask(segment, h, w)


def _check_segmentation(seg: Any, h: int, w: int, where: str) -> None:
    """Validate a COCO ``segmentation``: a list of polygons ``[x1, y1, ...]`` (≥ 3 points each) or an RLE
    ``{"size": [h, w], "counts": list | str}`` of this image's size."""
    if isinstance(seg, list):
        if not seg:
            raise DatasetError(f"{where}: empty segmentation (no polygon)")
        for k, poly in enumerate(seg):
            if not isinstance(poly, (list, tuple)) or not all(isinstance(v, (int, float)) for v in poly):
                raise DatasetError(f"{where}: polygon {k} must be a flat list of numbers [x1, y1, x2, y2, ...]")
            if len(poly) % 2 or len(poly) < 6:
                raise DatasetError(f"{where}: polygon {k} needs an even number of values and at least 3 points, "
                                   f"got {len(poly)} values")
            if not all(math.isfinite(v) for v in poly):
                raise DatasetError(f"{where}: polygon {k} has non-finite values")
        return
    if isinstance(seg, Mapping) and "counts" in seg and "size" in seg:
        if [int(v) for v in seg["size"]] != [h, w]:
            raise DatasetError(f"{where}: RLE size {list(seg['size'])} differs from the image's [h, w] = {[h, w]}")
        counts = seg["counts"]
        if isinstance(counts, list) and sum(int(c) for c in counts) != h * w:
            raise DatasetError(f"{where}: uncompressed RLE counts sum to {sum(counts)}, not h·w = {h * w}")
        if not isinstance(counts, (list, str, bytes)):
            raise DatasetError(f"{where}: RLE counts must be a list (uncompressed) or a string (compressed)")
        return
    raise DatasetError(f"{where}: segmentation must be a list of polygons or an RLE dict with 'size' and 'counts' "
                       f"(instance segmentation needs one for every annotation), got {type(seg).__name__}")


class CocoInstanceDataset(_InstanceMasks, CocoDetectionDataset):
    """COCO JSON whose annotations carry ``segmentation`` as polygons or RLE (compressed or not), decoded with
    pycocotools. Boxes come from ``bbox`` as in :class:`~downstream.datasets.CocoDetectionDataset`; ``iscrowd=1``
    annotations are not targets but are kept (with their segmentation) for :func:`to_coco_instances`.
    """

    def _record(self, im: dict[str, Any], anns: list[dict[str, Any]], index_of: dict[int, int],
                ann_path: Path) -> InstanceRecord:
        record = super()._record(im, anns, index_of, ann_path)
        segments = []
        for ann in anns:
            where = f"{ann_path}: annotation id {ann.get('id')} of {im['file_name']}"
            _check_segmentation(ann.get("segmentation"), record.height, record.width, where)
            if not ann.get("iscrowd", 0):
                segments.append(ann["segmentation"])
        fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
        return InstanceRecord(**fields, segments=segments)

    def _decode(self, segment: Any, h: int, w: int) -> np.ndarray:
        return coco_segment_mask(segment, h, w)


InstanceDataset = YoloInstanceDataset | CocoInstanceDataset


def to_coco_instances(dataset: InstanceDataset, indices: Sequence[int] | None = None) -> dict[str, Any]:
    """COCO ground truth of an instance dataset (its images ``indices``, default all), for ``coco_map(gt, results,
    iou_type="segm")`` and ``"bbox"``.

    :func:`~downstream.datasets.to_coco_dict` (ids, ``bbox``, ``iscrowd``, categories, image ``height``/``width``)
    with each target's mask (as the dataset decodes it: ultralytics' rasterisation for YOLO polygons) as compressed
    RLE in ``segmentation`` and its pixel count as ``area``. Crowd annotations of COCO sets are kept as they are
    (a crowd region without ``area`` gets its pixel count).
    """
    from pycocotools import mask as mask_utils

    indices = range(len(dataset)) if indices is None else indices
    gt = to_coco_dict(dataset, indices)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    for i in indices:
        r = dataset.records[i]
        anns = by_image.get(r.image_id, [])
        sources = r.annotations if r.annotations is not None else [{}] * len(anns)
        targets = [a for a in anns if not a["iscrowd"]]
        rles = masks_to_rle(dataset.masks(i))
        if len(rles) != len(targets):
            raise RuntimeError(f"image {r.image_id}: {len(rles)} masks for {len(targets)} non-crowd annotations")
        for ann, rle in zip(targets, rles, strict=True):
            ann["segmentation"], ann["area"] = rle, float(mask_utils.area(rle))
        for ann, source in zip(anns, sources, strict=True):
            if ann["iscrowd"] and "area" not in source:  # a crowd region's area is its pixel count
                ann["area"] = float(coco_segment_mask(ann["segmentation"], r.height, r.width).sum())
    return gt


# ----------------------------------------------------------------------------------------------- model


@dataclass
class InstanceSegmenter(Detector):
    """A YOLO-seg model (ultralytics ``SegmentationModel``) plus what callers need to know about it.

    Everything of :class:`~downstream.detection.Detector` (``model``, ``names``, ``stride``, ``device``, ``nc``;
    ``downstream.task_losses.detector_features`` works on it); ``predict`` adds masks.
    """

    def predict(
        self,
        images: torch.Tensor,
        imgsz: int | None = None,
        conf: float = 0.001,
        iou: float = 0.7,
        max_det: int = 300,
        multi_label: bool = True,
        retina_masks: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """Segment object instances in ``images`` (B×3×H×W float RGB in [0, 1]), without gradients.

        Letterboxing, NMS and box mapping as :meth:`Detector.predict`. Masks as ultralytics' validator builds the
        masks it scores by default (``ops.process_mask``: prototypes × coefficients, thresholded at 0 and cropped
        to the box at the prototype resolution, ¼ of the letterboxed input), then resampled bilinearly onto the
        input pixels (padding removed) and thresholded at 0.5: blocky at ¼ resolution, which costs mAP at strict
        IoU thresholds. ``retina_masks=True`` builds them as its accurate mode does (``save_json``/``save_txt``,
        and ``predict(retina_masks=True)``): ``ops.process_mask_native``, the mask logits upsampled to the
        letterboxed input before thresholding and cropping. Returns per image ``{"boxes": float32 N×4 xyxy input
        px, "scores": float32 N, "classes": int64 N, "masks": bool N×H×W}``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape B×3×H×W, got {tuple(images.shape)}")
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.ops import process_mask, process_mask_native

        h0, w0 = images.shape[-2:]
        x, gains, pads = letterbox(images, imgsz or max(h0, w0), self.stride)
        self.model.eval()
        results = []
        with torch.inference_mode():
            (raw, proto), _ = self.model(x.to(self.device, torch.float32))
            proto = proto[0] if isinstance(proto, (tuple, list)) else proto  # YOLO26: (protos, semantic logits)
            out = non_max_suppression(raw, conf, iou, nc=self.nc, multi_label=multi_label, max_det=max_det,
                                      end2end=bool(getattr(self.model, "end2end", False)))
            for det, protos in zip(out, proto, strict=True):
                net_shape = tuple(x.shape[2:])
                if retina_masks:
                    masks = process_mask_native(protos, det[:, 6:], det[:, :4], net_shape)
                else:
                    masks = process_mask(protos, det[:, 6:], det[:, :4], shape=net_shape)
                masks = _masks_to_input(masks, net_shape, gains, pads, (h0, w0))
                results.append({**detections_to_input(det, gains, pads, (h0, w0)), "masks": masks.cpu()})
        return results


def _masks_to_input(masks: torch.Tensor, net_shape: tuple[int, int], gains: tuple[float, float],
                    pads: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Binary masks (N×mh×mw) over the letterboxed network input (``net_shape``) → bool N×H×W on the input image.

    Each input pixel centre is mapped through the letterbox (``gains`` = (y, x) scale input → network pixels,
    ``pads`` = (top, left)) to the mask grid and sampled bilinearly, then thresholded at 0.5: ultralytics'
    ``ops.scale_masks`` (crop the padding, resize) without rounding the padding to whole mask pixels.
    """
    h0, w0 = size
    n, mh, mw = masks.shape
    if n == 0:
        return torch.zeros((0, h0, w0), dtype=torch.bool, device=masks.device)
    sy, sx = mh / net_shape[0], mw / net_shape[1]  # network → mask pixels
    ys = ((torch.arange(h0, device=masks.device) + 0.5) * gains[0] + pads[0]) * sy
    xs = ((torch.arange(w0, device=masks.device) + 0.5) * gains[1] + pads[1]) * sx
    gy, gx = torch.meshgrid(2 * ys / mh - 1, 2 * xs / mw - 1, indexing="ij")  # align_corners=False normalisation
    grid = torch.stack((gx, gy), -1)[None].float()
    out = torch.empty((n, h0, w0), dtype=torch.bool, device=masks.device)
    step = max(1, MASK_CHUNK_PIXELS // (h0 * w0))
    for i in range(0, n, step):
        chunk = masks[i:i + step, None].float()
        sampled = F.grid_sample(chunk, grid.expand(len(chunk), -1, -1, -1), mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        torch.gt(sampled[:, 0], 0.5, out=out[i:i + step])
    return out


def _missing_weights_error(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"instance segmentation weights not found: {path}. derainbench never downloads models; supply a local .pt "
        f"file at that path (e.g. train one with downstream.detection.train_detector(..., task='segment')), or pass "
        f"a model .yaml such as 'yolo11n-seg.yaml' to build an untrained one."
    )


def _require_segment_head(net: torch.nn.Module, source: str | Path) -> None:
    from ultralytics.nn.modules.head import Segment

    head = net.model[-1] if hasattr(net, "model") else None
    if not isinstance(head, Segment):
        raise ValueError(
            f"{source} is not an instance segmentation model (its head is {type(head).__name__}, not Segment); "
            "use a YOLO-seg model: a '-seg' .yaml such as 'yolo11n-seg.yaml', or a .pt trained with "
            "train_detector(..., task='segment'). Detection models load with downstream.detection.load_detector."
        )


def load_instance_segmenter(model: str | Path, nc: int | None = None,
                            device: str | torch.device = "cpu") -> InstanceSegmenter:
    """Load a YOLO-seg model from a local ``.pt`` or build it from a model ``.yaml`` (``yolo11n-seg.yaml``).

    Same rules as :func:`~downstream.detection.load_detector`: nothing is downloaded (a missing ``.pt`` is a
    ``FileNotFoundError``), ``.pt`` files are loaded with ``weights_only`` first (crafted pickles refused), ``nc``
    overrides a ``.yaml``'s class count and must match a ``.pt``'s. A model without a ``Segment`` head is a
    ``ValueError``.
    """
    offline_ultralytics()
    path = Path(model)
    device = torch.device(device)
    suffix = path.suffix.lower()
    if suffix == ".pt":
        if not path.is_file():
            raise _missing_weights_error(path)
        det = load_detector(path, nc=nc, device=device)
        _require_segment_head(det.model, path)
        return InstanceSegmenter(model=det.model, names=det.names, stride=det.stride, device=device,
                                 train_imgsz=det.train_imgsz)
    if suffix not in (".yaml", ".yml"):
        raise ValueError(f"unsupported instance segmentation model {model!r}: expected a local .pt or a model .yaml")
    check_model_yaml(path)
    from ultralytics.nn.tasks import SegmentationModel

    net = SegmentationModel(cfg=str(model), nc=nc, verbose=False)
    _require_segment_head(net, model)
    net = net.to(device).eval()
    names = _names_list(getattr(net, "names", None), int(net.model[-1].nc))
    return InstanceSegmenter(model=net, names=names, stride=max(int(net.stride.max()), 32), device=device)


# ----------------------------------------------------------------------------------------------- loss


class InstanceSegmentationLoss(DetectionLoss):
    """YOLO-seg training loss of ``segmenter`` on images, differentiable with respect to the images.

    :class:`~downstream.task_losses.DetectionLoss` with ultralytics' segmentation criterion (``init_criterion()`` of
    a ``SegmentationModel``: ``v8SegmentationLoss``, whose mask loss is weighted by the ``box`` gain). Targets' masks
    are laid out as ultralytics' dataset does: padded with the images, downsampled by the model's ``mask_ratio``
    (default 4; bilinear, ≥ 0.5, like its ``cv2.resize`` of the rasterised polygon) and, with ``overlap_mask``
    (default), drawn into one index map per image in area-descending order (smaller instances on top), the targets
    reordered to match. ``freeze`` as in ``DetectionLoss``.
    """

    def __init__(self, segmenter: InstanceSegmenter, box: float = 7.5, cls: float = 0.5, dfl: float = 1.5,
                 freeze: bool = True) -> None:
        _require_segment_head(segmenter.model, "the segmenter's model")
        super().__init__(segmenter, box=box, cls=cls, dfl=dfl, freeze=freeze)
        inner = getattr(self.criterion, "one2many", self.criterion)  # E2ELoss wraps two criteria
        self.overlap = bool(getattr(inner, "overlap", True))
        self.mask_ratio = int(getattr(segmenter.model.args, "mask_ratio", 4) or 4)
        self.names = tuple(n.removesuffix("_loss") for n in inner.loss_names)

    def mask_batch(self, targets: list[dict[str, Any]], image_size: tuple[int, int], padded_size: tuple[int, int]
                   ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """Targets (in the order the masks refer to) and ``batch["masks"]`` for the criterion.

        ``image_size`` = (H, W) of the input masks, ``padded_size`` = the stride-padded input. Returns B×h×w uint8
        index maps (``overlap``) or M×h×w float masks in batch order, h×w = ``padded_size // mask_ratio``.
        """
        h, w = image_size
        hp, wp = padded_size
        size = (hp // self.mask_ratio, wp // self.mask_ratio)
        device = self.detector.device
        ordered, maps = [], []
        for i, t in enumerate(targets):
            if "masks" not in t:
                raise ValueError(f"target {i} needs 'masks' (N×H×W bool), got keys {sorted(t)}")
            m = torch.as_tensor(t["masks"])
            m = m.to(device).reshape(-1, *m.shape[-2:]) if m.numel() else m.to(device).reshape(0, h, w)
            n = int(torch.as_tensor(t["classes"]).numel())
            if tuple(m.shape) != (n, h, w):
                raise ValueError(f"target {i}: masks must be {n}×{h}×{w} (one per class entry, image size), "
                                 f"got {tuple(m.shape)}")
            m = F.pad(m.float(), (0, wp - w, 0, hp - h))
            small = (F.interpolate(m[None], size, mode="bilinear", align_corners=False)[0] >= 0.5) if n else \
                m.new_zeros((0, *size))
            small = small.float()
            order = torch.argsort(small.sum((1, 2)), descending=True, stable=True) if self.overlap else \
                torch.arange(n, device=device)
            ordered.append({"boxes": torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
                            [order], "classes": torch.as_tensor(t["classes"], device=device).reshape(-1)[order]})
            small = small[order]
            if self.overlap:
                index = small * torch.arange(1, n + 1, device=device, dtype=torch.float32).view(-1, 1, 1)
                maps.append(index.amax(0) if n else torch.zeros(size, device=device))
            else:
                maps.append(small)
        if self.overlap:
            masks = torch.stack(maps).to(torch.uint8 if max((len(o["classes"]) for o in ordered), default=0) < 256
                                         else torch.int32) if maps else torch.zeros((0, *size), device=device)
        else:
            masks = torch.cat(maps) if maps else torch.zeros((0, *size), device=device)
        return ordered, masks

    def __call__(
        self, images: torch.Tensor, targets: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of ``images`` (B×3×H×W float in [0, 1]) against ``targets`` (B dicts of ``boxes`` N×4 xyxy input
        px, ``classes`` N, ``masks`` N×H×W bool).

        Returns the per-image mean of ``box·(L_box + L_seg) + cls·L_cls + dfl·L_dfl`` (+ YOLO26's semantic term;
        ultralytics' trainer loss divided by B; a scalar with grad) and the detached gain-weighted parts
        ``{"box", "seg", "cls", "dfl", "sem"}`` summing to it.
        """
        self.check(images, targets)
        x = self.pad(images.to(self.detector.device, torch.float32))
        ordered, masks = self.mask_batch(targets, tuple(images.shape[-2:]), tuple(x.shape[-2:]))
        batch = self.to_ultralytics_batch(ordered, tuple(x.shape[-2:]))
        batch["masks"] = masks
        batch["img"] = x
        preds = self.detector.model(x)
        loss, _ = self.criterion(preds, batch)  # gain-weighted (box, seg, cls, dfl, sem) × B
        parts = loss / images.shape[0]
        return parts.sum(), {k: v.detach() for k, v in zip(self.names, parts, strict=True)}


# ----------------------------------------------------------------------------------------------- evaluator


class InstanceEvaluator(DetectionEvaluator):
    """:class:`~downstream.metrics.DetectionEvaluator` for instances: scores masks (COCO ``segm``) and boxes.

    Predictions ``{"boxes", "scores", "classes", "masks": N×H×W bool}``, targets ``{"boxes", "classes",
    "masks"}`` (masks at the image's size; ground-truth masks go in as RLE with their pixel count as ``area``).
    ``compute`` → ``{"mask_map", "mask_map50", "box_map", "box_map50", "per_class": {name: mask AP},
    "per_class50": {name: mask AP@.5}}``; ``image_stats=True`` adds two ``coco`` entries, prefixes ``mask_`` and
    ``box_``.
    """

    def _image_entry(self, target: Mapping[str, Any], image_id: int) -> dict[str, Any]:
        masks = target.get("masks")
        if masks is None or len(masks.shape) != 3:
            raise ValueError(f"image {image_id}: instance targets need 'masks' N×H×W (the image size, also when N=0)")
        return {"id": image_id, "height": int(masks.shape[-2]), "width": int(masks.shape[-1])}

    def annotations(self, target: Mapping[str, Any], image_id: int, first_id: int) -> list[dict[str, Any]]:
        """The box annotations of :class:`DetectionEvaluator` plus ``segmentation`` (RLE) and mask ``area``."""
        from pycocotools import mask as mask_utils

        anns = super().annotations(target, image_id, first_id)
        rles = masks_to_rle(target["masks"])
        if len(rles) != len(anns):
            raise ValueError(f"image {image_id}: {len(anns)} boxes but {len(rles)} masks")
        for ann, rle in zip(anns, rles, strict=True):
            ann["segmentation"], ann["area"] = rle, float(mask_utils.area(rle))
        return anns

    def compute(self, image_stats: bool = False) -> dict[str, Any]:
        """Mask and box COCO mAP of everything accumulated (see :func:`~downstream.metrics.coco_map`)."""
        gt, results = self.gt_dict(), self.results()
        mask = coco_map(gt, results, iou_type="segm", max_dets=self.max_dets, image_stats=image_stats)
        box = coco_map(gt, results, iou_type="bbox", max_dets=self.max_dets, image_stats=image_stats)
        out: dict[str, Any] = {"mask_map": mask["map"], "mask_map50": mask["map50"], "box_map": box["map"],
                               "box_map50": box["map50"], "per_class": mask["per_class"],
                               "per_class50": mask["per_class50"]}
        if image_stats:
            out["image_stats"] = [{"kind": "coco", "prefix": "mask_", "stats": mask["image_stats"]},
                                  {"kind": "coco", "prefix": "box_", "stats": box["image_stats"]}]
        return out



# ------------------------------------------------------------------------------------------------------- the task
@dataclass
class InstanceRecipe(DetectorRecipe):
    """How `derainbench train-task` trains an instance segmenter: a YOLO-seg model ``.yaml`` (shipped with
    ultralytics) or a local ``-seg.pt``, trained offline by ``train_detector(..., task="segment")``."""

    model: str = "yolo11n-seg.yaml"


class InstanceTask(DetectionTask):
    """Instance segmentation: ultralytics YOLO-seg models, COCO mask mAP (``segm``) and box mAP through pycocotools;
    labels are ``{"boxes": N×4 xyxy px, "classes": N, "masks": N×H×W bool}`` (predictions add ``"scores"``)."""

    name = "instance"
    title = "Instance segmentation"
    aliases = ("inst", "instance-segmentation")
    formats = ("yolo", "coco")
    metrics = (MetricSpec("mask_map", "mask mAP@[.5:.95]", "mask mAP"), MetricSpec("mask_map50", "mask mAP@.5"),
               MetricSpec("box_map", "box mAP@[.5:.95]", "box mAP"), MetricSpec("box_map50", "box mAP@.5"))
    per_class = {"per_class": MetricSpec("mask_ap", "mask AP@[.5:.95]", "mask AP"),
                 "per_class50": MetricSpec("mask_ap50", "mask AP@.5")}
    val_metric = "mask_map50"
    image_metric = MetricSpec("mask_map50", "mask AP@.5")
    protocol_text = "COCO protocol for masks and boxes (pycocotools)"
    scoring_text = "COCO mask and box mAP (pycocotools), conf ≥ {conf}, NMS IoU {iou}"
    grid_text = ("the k highest-scoring instances with confidence >= {conf:g} (k = ground-truth objects; instances "
                 "whose boxes overlap a higher-scoring one by IoU > {iou:g} skipped): masks tinted in their class "
                 "colour over the image in grey, boxes labelled class and score.")
    model_help = "a local YOLO-seg .pt or a model .yaml such as yolo11n-seg.yaml"
    recipe = InstanceRecipe
    yolo_task = "segment"

    def load_dataset(self, format: str, path: Any, split: str = "val") -> Any:
        from downstream.datasets import open_detection_dataset

        return open_detection_dataset(format, path, split, yolo=YoloInstanceDataset, coco=CocoInstanceDataset)

    def collate(self, labels: Sequence[Any]) -> list[dict[str, torch.Tensor]]:
        out = super().collate(labels)
        for item, label in zip(out, labels, strict=True):
            item["masks"] = torch.as_tensor(np.asarray(label["masks"], bool))
        return out

    def crop(self, label: Any, top: int, left: int, size: int, shape: tuple[int, int],
             min_keep: float = 0.4) -> dict[str, np.ndarray]:
        """Boxes as for detection; each kept instance's mask cut to the window (zero beyond the image)."""
        out, keep = crop_boxes(label, top, left, size, shape, min_keep)
        masks = np.asarray(label["masks"], bool)[keep]
        window = np.zeros((len(masks), size, size), bool)
        cut = masks[:, top:top + size, left:left + size]
        window[:, :cut.shape[1], :cut.shape[2]] = cut
        return {**out, "masks": window}

    def load_model(self, path: str | Path, names: Sequence[str], device: str | torch.device = "cpu") -> Any:
        from_yaml = str(path).endswith((".yaml", ".yml"))  # a fresh model: give it the dataset's classes
        model = load_instance_segmenter(path, nc=len(names) if from_yaml else None, device=device)
        class_count_check(model, names, path)
        return model

    def evaluator(self, names: Sequence[str]) -> Any:
        return InstanceEvaluator(names)

    def dataset_evaluator(self, dataset: Any, indices: Sequence[int]) -> tuple[Any, list[int]]:
        """:class:`InstanceEvaluator` over the dataset's own ground truth of images ``indices``
        (:func:`to_coco_instances`: crowd regions included); ids = the dataset's image ids."""
        evaluator = InstanceEvaluator(dataset.names, ground_truth=to_coco_instances(dataset, indices))
        return evaluator, [dataset.image_ids[i] for i in indices]

    def loss(self, model: Any, freeze: bool = True) -> Any:
        criterion = InstanceSegmentationLoss(model, freeze=freeze)
        return lambda images, labels: criterion(images, labels)[0]

    def save_label(self, folder: Path, stem: str, label: Any) -> None:
        """JSON: boxes, classes (and scores) as lists, masks as COCO RLEs."""
        from derain.fileio import atomic_write_text, to_jsonable

        data = {k: v for k, v in label.items() if k != "masks"}
        data["masks"] = masks_to_rle(label["masks"])
        atomic_write_text(folder / f"{stem}.json", json.dumps(to_jsonable(data)))

    def load_label(self, folder: Path, stem: str) -> dict | None:
        from pycocotools import mask as mask_utils

        label = super().load_label(folder, stem)
        if label is None:
            return None
        rles = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in label["masks"]]
        h, w = label["masks"][0]["size"] if rles else (0, 0)
        masks = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool) if rles else np.zeros((0, h, w), bool)
        return {**label, "boxes": np.asarray(label["boxes"], np.float32).reshape(-1, 4),
                "classes": np.asarray(label["classes"], np.int64), "masks": masks,
                **({"scores": np.asarray(label["scores"], np.float32)} if "scores" in label else {})}

    def describe(self, label: Any) -> str:
        return f"{len(label['classes'])} instances"

    def draw(self, ax: Any, image: Any, label: Any, names: Sequence[str], color_of: Any, objects: int | None = None,
             conf: float = 0.25, px_per_pt: float = 1.0) -> set[int]:
        from downstream.drawing import DEFAULT_DRAWN, display_indices, draw_boxes, grey, tint

        keep = display_indices(label, objects or DEFAULT_DRAWN, conf=conf) if "scores" in label else \
            list(range(len(label["classes"])))
        shown = grey(image)
        for i in sorted(keep, key=lambda i: -int(np.asarray(label["masks"][i]).sum())):  # small ones on top
            tint(shown, np.asarray(label["masks"][i], bool), color_of(int(label["classes"][i])))
        ax.imshow(np.clip(shown, 0, 1), interpolation="nearest")
        boxes = {"boxes": [label["boxes"][i] for i in keep], "classes": [label["classes"][i] for i in keep]}
        if "scores" in label:
            boxes["scores"] = [float(label["scores"][i]) for i in keep]
        draw_boxes(ax, boxes, names, color_of, px_per_pt)
        return {int(c) for c in boxes["classes"]}


register_task(InstanceTask())
