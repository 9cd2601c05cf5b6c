"""Ultralytics YOLO adapter: load, predict in memory on [0, 1] tensors, train offline.

Images are ``B×3×H×W`` float RGB tensors in [0, 1]. Predictions come back per image as
``{"boxes": float32 N×4 xyxy in input pixels, "scores": float32 N, "classes": int64 N}``.

Nothing here downloads: ``.pt`` files must exist locally (ultralytics would otherwise fetch official
names such as ``yolo11n.pt``), ``.yaml`` models are built fresh, and training runs with
``plots=False`` (no font download) and ``amp=False`` on CPU (the AMP check downloads a model).
Every entry point calls :func:`offline_ultralytics` before ultralytics is imported.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

# ultralytics runs torchvision's NMS kernel only when torchvision is already imported; otherwise its Python loop,
# measured 11x slower on dense predictions (bench/nms_speed.py) and stopped by ultralytics' NMS time limit (silently
# fewer detections). Importing it here makes every predict use the kernel.
import torchvision  # noqa: F401, E402  (isort: after torch)

from downstream.tasks import MetricSpec, Task, check_class_names, register_task

PAD_VALUE = 114 / 255  # ultralytics' letterbox grey
RECT_PAD = 0.5  # ultralytics' validator pads rect batch shapes by half a stride


class DetectionDataset(Protocol):
    """What detection code needs from a dataset (see ``downstream.datasets``)."""

    names: list[str]

    def __len__(self) -> int: ...

    def image_path(self, i: int) -> Path: ...

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]: ...


@dataclass
class Detector:
    """A YOLO detection model plus what callers need to know about it.

    ``model`` is the ultralytics ``DetectionModel`` (a plain ``torch.nn.Module``); ``stride`` is its
    largest stride in pixels (input sides are padded to multiples of it).
    """

    model: torch.nn.Module
    names: list[str]
    stride: int
    device: torch.device
    train_imgsz: int | None = None  # the input size it was trained at (a .pt's ``train_args["imgsz"]``), if recorded

    @property
    def nc(self) -> int:
        """Number of classes the model predicts."""
        return len(self.names)

    def predict(
        self,
        images: torch.Tensor,
        imgsz: int | None = None,
        conf: float = 0.001,
        iou: float = 0.7,
        max_det: int = 300,
        multi_label: bool = True,
    ) -> list[dict[str, torch.Tensor]]:
        """Detect objects in ``images`` (B×3×H×W float RGB in [0, 1]), without gradients.

        The batch is letterboxed like ultralytics' validator (long side resized to ``imgsz``, default
        ``max(H, W)``; centred grey padding to a stride multiple), NMS'd, and boxes are mapped back to
        the input's pixel coordinates (clipped to the image). ``multi_label=True`` matches the validator.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape B×3×H×W, got {tuple(images.shape)}")
        from ultralytics.utils.nms import non_max_suppression

        h0, w0 = images.shape[-2:]
        x, gains, pads = letterbox(images, imgsz or max(h0, w0), self.stride)
        self.model.eval()
        with torch.inference_mode():
            raw = self.model(x.to(self.device, torch.float32))
            out = non_max_suppression(
                raw,
                conf,
                iou,
                multi_label=multi_label,
                max_det=max_det,
                end2end=bool(getattr(self.model, "end2end", False)),
            )
        return [detections_to_input(det, gains, pads, (h0, w0)) for det in out]


def detections_to_input(det: torch.Tensor, gains: tuple[float, float], pads: tuple[int, int],
                        size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """NMS output rows ``x1 y1 x2 y2 score class ...`` in letterboxed pixels -> ``{"boxes", "scores", "classes"}`` on
    the CPU, boxes in the input's pixels (``gains``/``pads``: (y, x) scale and (top, left) padding of
    :func:`letterbox`; clipped to ``size`` = (H, W))."""
    det = det.float().cpu()
    boxes = det[:, :4].clone()
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - pads[1]) / gains[1]).clamp(0, size[1])
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - pads[0]) / gains[0]).clamp(0, size[0])
    return {"boxes": boxes, "scores": det[:, 4].clone(), "classes": det[:, 5].long()}


def letterbox(
    images: torch.Tensor, imgsz: int, stride: int, rect_pad: float = RECT_PAD
) -> tuple[torch.Tensor, tuple[float, float], tuple[int, int]]:
    """Resize and pad ``images`` (B×3×H×W, [0, 1]) the way ultralytics' validator does with ``rect`` batches.

    Long side → ``imgsz`` (ceil-rounded short side), then centred in the batch shape
    ``ceil(aspect · imgsz / stride + rect_pad) · stride`` (shrunk if it does not fit, never enlarged),
    padded with 114/255. Note the half-stride ``rect_pad``: a 64 px image at ``imgsz=64`` runs at 96×96.
    Returns the padded batch, the (y, x) scale from input to resized pixels and the (top, left) padding.
    """
    h0, w0 = images.shape[-2:]
    r = imgsz / max(h0, w0)
    h1, w1 = (min(math.ceil(h0 * r), imgsz), min(math.ceil(w0 * r), imgsz)) if r != 1 else (h0, w0)
    aspect = (h0 / w0, 1.0) if h0 < w0 else (1.0, w0 / h0)
    th, tw = (math.ceil(a * imgsz / stride + rect_pad) * stride for a in aspect)
    r2 = min(th / h1, tw / w1, 1.0)  # the validator's LetterBox never scales up
    h2, w2 = max(round(h1 * r2), 1), max(round(w1 * r2), 1)
    x = images.float()
    if (h2, w2) != (h0, w0):
        x = F.interpolate(x, size=(h2, w2), mode="bilinear", align_corners=False)
    dh, dw = (th - h2) / 2, (tw - w2) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    bottom, right = th - h2 - top, tw - w2 - left
    x = F.pad(x, (left, right, top, bottom), value=PAD_VALUE)
    return x, (h2 / h0, w2 / w0), (top, left)


def _missing_weights_error(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"detector weights not found: {path}. derainbench never downloads models; supply a local .pt file at "
        f"that path (e.g. train one with downstream.detection.train_detector, or copy an ultralytics checkpoint "
        f"there), or pass a model .yaml such as 'yolo11n.yaml' to build an untrained one."
    )


def offline_ultralytics() -> None:
    """Tell ultralytics (before it is imported) to skip its online checks and never pip-install a missing package
    at run time (``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=false``; a value the user set is kept), and to load only
    with its restricted unpickler (``ULTRALYTICS_SAFE_LOAD=1`` whatever the environment says: a user's 0 would let a
    crafted .pt or model .yaml run code; our own checks, :func:`require_safe_checkpoint` and
    :func:`check_model_yaml`, do not depend on it)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"


def check_model_yaml(model: str | Path) -> None:
    """Refuse a local ultralytics model ``.yaml`` whose ``activation`` is anything but a ``torch.nn`` activation
    with literal arguments (``nn.SiLU()``, ``nn.LeakyReLU(0.1)``): ultralytics ``eval``s that string unless its
    safe-load flag is set. Names of ultralytics' bundled configs (no local file, e.g. ``yolo11n.yaml``) are its own
    files and pass. Raises ``ValueError`` naming the file."""
    import ast

    import yaml

    path = Path(model)
    if not path.is_file():
        return
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable model .yaml ({type(exc).__name__})") from None
    act = data.get("activation") if isinstance(data, dict) else None
    if act is None:
        return
    ok = False
    try:
        call = ast.parse(str(act).strip(), mode="eval").body
        if isinstance(call, ast.Call):
            names, node = [], call.func
            while isinstance(node, ast.Attribute):
                names.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name):
                names.append(node.id)
            cls = getattr(torch.nn, names[0], None) if names else None
            for a in (*call.args, *(k.value for k in call.keywords)):
                ast.literal_eval(a)  # ValueError for anything but a literal
            ok = (names[1:] in (["nn"], ["nn", "torch"]) and isinstance(cls, type) and issubclass(cls, torch.nn.Module)
                  and all(k.arg for k in call.keywords))
    except (SyntaxError, ValueError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"{path}: activation {str(act)[:80]!r} is not a torch.nn activation with literal arguments "
                         "(e.g. 'nn.SiLU()', 'nn.LeakyReLU(0.1)'); ultralytics would run it as Python code, so the "
                         "model is refused")


def require_safe_checkpoint(path: str | Path) -> None:
    """Refuse a YOLO ``.pt`` that ``torch.load(weights_only=True)`` with ultralytics' allow-list of model classes
    cannot read: a pickle that would run code is never unpickled (ultralytics' default load is unrestricted).

    Raises ``ValueError`` naming the file; ``RuntimeError`` when this torch/ultralytics cannot load safely at all.
    """
    offline_ultralytics()
    from ultralytics.nn import tasks

    safe = getattr(tasks, "_SafeLoad", None)
    if safe is None or not getattr(safe, "SUPPORTED", False) or not hasattr(tasks, "torch_safe_load"):
        raise RuntimeError(f"cannot load {path} safely: restricted (weights_only) loading of YOLO checkpoints needs "
                           "torch >= 2.6 and an ultralytics release with ULTRALYTICS_SAFE_LOAD; upgrade them")
    try:
        tasks.torch_safe_load(str(path), safe_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(
            f"refused to load {path}: it is not a plain ultralytics checkpoint that loads with "
            f"torch.load(weights_only=True) and ultralytics' allow-list ({type(exc).__name__}: {exc}). A crafted .pt "
            "can run code when unpickled; re-save trusted weights with ultralytics, or rebuild from a model .yaml."
        ) from exc


def _names_list(names: Any, nc: int) -> list[str]:
    if isinstance(names, dict):
        return [str(names.get(i, i)) for i in range(nc)]
    if isinstance(names, Sequence) and len(names) == nc:
        return [str(n) for n in names]
    return [str(i) for i in range(nc)]


def load_detector(model: str | Path, nc: int | None = None, device: str | torch.device = "cpu") -> Detector:
    """Load a YOLO detector from a local ``.pt`` checkpoint or build it from a model ``.yaml``.

    ``.yaml`` names may be ultralytics' bundled configs (``yolo11n.yaml``; the letter picks the scale);
    ``nc`` overrides their class count. ``nc`` with a ``.pt`` must match the checkpoint's count.
    Raises ``FileNotFoundError`` for a missing ``.pt`` without trying to download it.
    """
    offline_ultralytics()
    path = Path(model)
    device = torch.device(device)
    suffix = path.suffix.lower()
    train_imgsz = None
    if suffix == ".pt":
        if not path.is_file():
            raise _missing_weights_error(path)
        require_safe_checkpoint(path)
        from ultralytics.nn.tasks import load_checkpoint

        net, ckpt = load_checkpoint(str(path), device=device)
        train_imgsz = checkpoint_imgsz(ckpt)
        if train_imgsz is None:
            warnings.warn(f"{path} records no training input size (train_args imgsz): the bench scores each image "
                          "at its own long side unless the dataset sets imgsz", stacklevel=2)
    elif suffix in (".yaml", ".yml"):
        check_model_yaml(path)
        from ultralytics.nn.tasks import DetectionModel

        net = DetectionModel(cfg=str(model), nc=nc, verbose=False).to(device)
    else:
        raise ValueError(f"unsupported detector model {model!r}: expected a local .pt file or a model .yaml")
    net_nc = int(getattr(net, "nc", None) or net.model[-1].nc)
    if nc is not None and nc != net_nc:
        raise ValueError(f"{path} predicts {net_nc} classes but nc={nc} was requested")
    stride = int(max(int(net.stride.max()), 32)) if hasattr(net, "stride") else 32
    return Detector(model=net.eval(), names=_names_list(getattr(net, "names", None), net_nc), stride=stride,
                    device=device, train_imgsz=train_imgsz)


def checkpoint_imgsz(ckpt: Any) -> int | None:
    """The input size an ultralytics checkpoint was trained at (``ckpt["train_args"]["imgsz"]``, what its validator
    defaults to; a ``[h, w]`` pair gives its long side), or None when it records none."""
    imgsz = (ckpt.get("train_args") or {}).get("imgsz") if isinstance(ckpt, dict) else None
    if isinstance(imgsz, (list, tuple)) and imgsz:
        imgsz = max(imgsz)
    try:
        return int(imgsz) if imgsz is not None and int(imgsz) > 0 else None
    except (TypeError, ValueError):
        return None


def class_count_check(detector: Detector, names: Sequence[str], model: str | Path = "detector") -> None:
    """Raise ``ValueError`` when the detector's class count differs from the dataset's (its class ``names``), or its
    class names (where the checkpoint carries them) are not the dataset's in the same order
    (:func:`downstream.tasks.check_class_names`)."""
    if detector.nc != len(names):
        raise ValueError(
            f"class count mismatch: detector predicts {detector.nc} classes ({detector.names[:5]}...) but the "
            f"dataset has {len(names)} ({list(names)[:5]}...); train or load a detector for this "
            f"dataset, or build it from a .yaml with nc={len(names)}"
        )
    check_class_names(detector.names, names, model)


def _require_training_checkpoint(path: Path) -> None:
    """``recipe.yolo.resume``: ``path`` (already checked safe) must hold an ultralytics model and its train args;
    ultralytics' own check says "Resume checkpoint not found" for any file it cannot resume from."""
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(str(path), safe_only=True)
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, torch.nn.Module) or not isinstance(ckpt.get("train_args"), dict):
        raise ValueError(f"recipe.yolo.resume: {path} exists but is not an ultralytics training checkpoint (no model "
                         "and train args inside); resume takes the last.pt of an interrupted run, OUT/train/weights/"
                         "last.pt")


def check_yolo_overrides(overrides: dict[str, Any]) -> None:
    """``recipe.yolo``'s keys must be ultralytics train arguments of the right type: one line naming the key
    (ultralytics itself raises ``SyntaxError`` with its whole argument table)."""
    from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg

    unknown = sorted(set(overrides) - set(DEFAULT_CFG_DICT))
    if unknown:
        raise ValueError(f"{', '.join(f'recipe.yolo.{k}' for k in unknown)}: not an ultralytics train argument "
                         "(see `yolo cfg` or ultralytics' default.yaml for the valid keys)")
    try:
        check_cfg(dict(overrides))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"recipe.yolo: {exc}") from exc


def train_detector(
    data_yaml: str | Path,
    model: str | Path = "yolo11n.yaml",
    epochs: int = 50,
    imgsz: int = 640,
    batch: int = 16,
    out_dir: str | Path = "runs/detect",
    device: str = "cpu",
    seed: int = 0,
    task: str = "detect",
    rain: Any = None,
    **overrides: Any,
) -> Path:
    """Train a YOLO detector with ultralytics, offline, and return the path of its best ``.pt``.

    Runs go to ``out_dir/train`` (overwritten). Defaults: ``plots=False``, ``workers=0``, ``amp=False`` on
    CPU (ultralytics' AMP check would download a model), ``val=True``; ``overrides`` go to ``YOLO.train``.
    ``task="segment"`` trains an instance segmentation model (a ``-seg`` model on a YOLO-seg data.yaml with
    polygon labels; see ``downstream.instance``). ``rain`` (a :class:`downstream.rain_augment.RainAugment`; its
    seed defaults to ``seed``) rains training images as they are loaded, anew every epoch
    (:mod:`downstream.rain_yolo`); validation stays clean.
    """
    offline_ultralytics()
    if rain is not None:
        rain = rain.resolve(seed)  # a bad rain is refused before anything is trained
        if "," in str(device):  # ultralytics' DDP runs a generated script that carries no callbacks
            raise ValueError(f"rain augmentation trains YOLO models on one device, got device={device!r}")
    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise FileNotFoundError(f"detection data yaml not found: {data_yaml} (an ultralytics data.yaml is needed)")
    if Path(model).suffix.lower() == ".pt":
        if not Path(model).is_file():
            raise _missing_weights_error(Path(model))
        require_safe_checkpoint(model)
    else:
        check_model_yaml(model)
    check_yolo_overrides(overrides)
    overrides = dict(overrides)
    if overrides.get("resume") is True or str(overrides.get("resume")).lower() == "true":
        # ultralytics would look for the newest run under its own runs/ folder, not under out_dir
        last = Path(out_dir) / "train" / "weights" / "last.pt"
        if not last.is_file():
            raise FileNotFoundError(f"recipe.yolo.resume=true: nothing to resume, {last} not found (resume continues "
                                    "an interrupted run in the same out; or give recipe.yolo.resume=PATH/last.pt)")
        overrides["resume"] = str(last)
    for key in ("pretrained", "resume"):  # ultralytics unpickles these itself: the same safe check as a model .pt
        value = overrides.get(key)
        if isinstance(value, (str, Path)) and str(value).lower() not in ("true", "false"):
            if not Path(value).is_file():
                raise FileNotFoundError(f"recipe.yolo.{key}: file not found: {value}")
            require_safe_checkpoint(value)
            if key == "resume":
                _require_training_checkpoint(Path(value))
    from ultralytics import YOLO

    args: dict[str, Any] = {
        "plots": False,
        "workers": 0,
        "amp": str(device) != "cpu",
        "exist_ok": True,
        "name": "train",
        "verbose": True,
    }
    args.update(overrides)
    args.update(
        data=str(data_yaml.resolve()),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        project=str(Path(out_dir).resolve()),
        device=device,
        seed=seed,
    )
    yolo = YOLO(str(model), task=task)
    if rain is not None:
        from downstream.rain_yolo import add_rain_callback

        add_rain_callback(yolo, rain)
    threads = torch.get_num_threads()
    try:
        yolo.train(**args)
    except (FileNotFoundError, AssertionError) as exc:  # ultralytics' resume: a vague message, or a bare assert
        if not args.get("resume") or (isinstance(exc, FileNotFoundError) and "Resume checkpoint" not in str(exc)):
            raise
        cause = exc.__cause__ or exc
        raise ValueError(f"recipe.yolo.resume={args['resume']}: cannot resume from it: "
                         f"{' '.join(str(cause).split()) or type(cause).__name__}") from exc
    finally:  # ultralytics' select_device sets torch to cpu_count - 1 threads (1 of 2 cores) for the process
        torch.set_num_threads(threads)
    trainer = yolo.trainer
    best = Path(trainer.best)
    return best if best.is_file() else Path(trainer.last)


# ------------------------------------------------------------------------------------------------------- the task
@dataclass
class DetectorRecipe:
    """How `derainbench train-task` trains a detector: an ultralytics YOLO model ``.yaml`` (shipped with ultralytics)
    or a local ``.pt`` to start from, trained offline by :func:`train_detector`."""

    model: str = "yolo11n.yaml"
    epochs: int = 30
    imgsz: int = 320
    yolo: dict[str, Any] = field(default_factory=dict)  # more ultralytics train arguments, e.g. warmup_epochs: 0


class DetectionTask(Task):
    """Object detection: ultralytics YOLO models, COCO mAP through pycocotools; labels are ``{"boxes": N×4 xyxy
    pixels, "classes": N}`` (predictions add ``"scores"``)."""

    name = "detection"
    title = "Detection"
    aliases = ("det",)
    formats = ("yolo", "coco", "bdd100k", "voc")
    # COCO's mAP for every format; VOC sets add the devkit's AP@.5 (only their cells hold those keys)
    metrics = (MetricSpec("map", "mAP@[.5:.95]", "mAP"), MetricSpec("map50", "mAP@.5"),
               MetricSpec("voc_map50_allpt", "VOC mAP@.5, all-point (VOC2010+ devkit)", "VOC mAP50 all-pt",
                          formats=("voc",)),
               MetricSpec("voc07_map50_11pt", "VOC2007 mAP@.5, 11-point (VOC2007 devkit)", "VOC07 mAP50 11-pt",
                          formats=("voc",)))
    per_class = {"per_class": MetricSpec("ap", "AP@[.5:.95]", "AP"), "per_class50": MetricSpec("ap50", "AP@.5"),
                 "per_class_voc": MetricSpec("voc_ap50_allpt", "VOC AP@.5, all-point", formats=("voc",)),
                 "per_class_voc07": MetricSpec("voc07_ap50_11pt", "VOC2007 AP@.5, 11-point", formats=("voc",))}
    val_metric = "map50"
    image_metric = MetricSpec("map50", "AP@.5")
    scoring_options = ("conf", "iou")
    protocol_text = "COCO protocol (pycocotools)"
    scoring_text = "COCO mAP (pycocotools), conf ≥ {conf}, NMS IoU {iou}"
    grid_text = ("the k highest-scoring boxes with confidence >= {conf:g} (k = ground-truth objects; boxes "
                 "overlapping a higher-scoring one by IoU > {iou:g} skipped), labelled class and score.")
    model_help = "a local YOLO .pt or a model .yaml such as yolo11n.yaml"
    recipe = DetectorRecipe
    yolo_task = "detect"  # what ultralytics calls the task (its trainer)

    def load_dataset(self, format: str, path: Any, split: str = "val") -> Any:
        """``yolo``, ``coco``: see :func:`downstream.datasets.open_detection_dataset`; ``bdd100k``: see
        :func:`downstream.bdd100k.open_bdd100k`; ``voc``: see :func:`downstream.voc.open_voc`."""
        if format == "bdd100k":
            from downstream.bdd100k import open_bdd100k

            return open_bdd100k(path, split)
        if format == "voc":
            from downstream.voc import open_voc

            return open_voc(path, split)
        from downstream.datasets import open_detection_dataset

        return open_detection_dataset(format, path, split)

    def collate(self, labels: Sequence[Any]) -> list[dict[str, torch.Tensor]]:
        return [{"boxes": torch.as_tensor(np.asarray(t["boxes"], np.float32)).reshape(-1, 4),
                 "classes": torch.as_tensor(np.asarray(t["classes"], np.int64)).reshape(-1)} for t in labels]

    def crop(self, label: Any, top: int, left: int, size: int, shape: tuple[int, int],
             min_keep: float = 0.4) -> dict[str, np.ndarray]:
        """Boxes shifted and clipped to the window; a box stays when at least ``min_keep`` of its area is inside."""
        return crop_boxes(label, top, left, size, shape, min_keep)[0]

    def load_model(self, path: str | Path, names: Sequence[str], device: str | torch.device = "cpu") -> Detector:
        from_yaml = str(path).endswith((".yaml", ".yml"))  # a fresh model: give it the dataset's classes
        detector = load_detector(path, nc=len(names) if from_yaml else None, device=device)
        class_count_check(detector, names, path)
        return detector

    def module(self, model: Detector) -> torch.nn.Module:
        return model.model

    def for_inference(self, model: Detector, channels_last: bool = False) -> Detector:
        model.model.fuse(verbose=False)  # Conv+BN folded for inference, as ultralytics' validator does
        return super().for_inference(model, channels_last)

    def predict(self, model: Detector, images: torch.Tensor, imgsz: int | None = None, conf: float = 0.001,
                iou: float = 0.7) -> list[dict[str, torch.Tensor]]:
        return [{k: v.cpu() for k, v in p.items()} for p in model.predict(images, imgsz=imgsz, conf=conf, iou=iou)]

    def evaluator(self, names: Sequence[str]) -> Any:
        from downstream.metrics import DetectionEvaluator

        return DetectionEvaluator(names)

    def input_size(self, model: Detector) -> tuple[int | None, str]:
        """The size it was trained at (a ``.pt``'s ``train_args``, as ultralytics' validator defaults to), else None
        (each image at its own long side: a ``.yaml`` model, or a ``.pt`` that records no size)."""
        if model.train_imgsz:
            return model.train_imgsz, "checkpoint"
        return None, "image long side"

    def dataset_evaluator(self, dataset: Any, indices: Sequence[int]) -> tuple[Any, list[int]]:
        """:class:`~downstream.metrics.DetectionEvaluator` over the dataset's own COCO ground truth of images
        ``indices`` (crowd, ignored and difficult objects included: :func:`~downstream.datasets.to_coco_dict`), with
        the VOC devkit's AP for VOC sets; ids = the dataset's image ids."""
        from downstream.datasets import to_coco_dict
        from downstream.metrics import DetectionEvaluator

        gt = to_coco_dict(dataset, indices)
        evaluator = DetectionEvaluator(dataset.names, ground_truth=gt, voc="voc" in dataset.protocols)
        return evaluator, [dataset.image_ids[i] for i in indices]

    def loss(self, model: Detector, freeze: bool = True) -> Any:
        from downstream.task_losses import DetectionLoss

        criterion = DetectionLoss(model, freeze=freeze)
        return lambda images, labels: criterion(images, labels)[0]

    def features(self, model: Detector, images: torch.Tensor) -> list[torch.Tensor]:
        from downstream.task_losses import detector_features

        return detector_features(model, images)

    def save_label(self, folder: Path, stem: str, label: Any) -> None:
        from derain.fileio import atomic_write_text, to_jsonable

        atomic_write_text(folder / f"{stem}.json", json.dumps(to_jsonable(label)))

    def load_label(self, folder: Path, stem: str) -> dict | None:
        path = folder / f"{stem}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def describe(self, label: Any) -> str:
        return f"{len(label['boxes'])} objects"

    def draw(self, ax: Any, image: Any, label: Any, names: Sequence[str], color_of: Any, objects: int | None = None,
             conf: float = 0.25, px_per_pt: float = 1.0) -> set[int]:
        from downstream.drawing import DEFAULT_DRAWN, display_boxes, draw_boxes

        ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
        shown = display_boxes(label, objects or DEFAULT_DRAWN, conf=conf) if "scores" in label else label
        draw_boxes(ax, shown, names, color_of, px_per_pt)
        return {int(c) for c in shown["classes"]}

    def train(self, recipe: DetectorRecipe, data: Any, out: Path, device: torch.device, seed: int, batch: int,
              progress: bool = True, format: str = "yolo", rain: Any = None) -> Path:
        """``format`` other than ``yolo``: the train and val splits are opened as the benchmark opens them and
        trained on through a YOLO view of them (``out/data``: image links and label files; see
        :func:`downstream.datasets.write_yolo_layout`); without a val split ultralytics validates on train (said on
        stderr), a broken one is an error. A YOLO data.yaml's splits are opened too (ultralytics needs its val)."""
        if format not in ("yolo", "") and self.yolo_task != "detect":
            raise ValueError(f"train-task trains {self.name} models from a YOLO data.yaml only (format yolo), "
                             f"got format {format!r}")
        # both splits opened as bench opens them: what bench refuses (a truncated image, a bad label) is refused
        # here too, before ultralytics would drop it with a warning
        splits = {"train": self.load_dataset(format or "yolo", data, "train")}
        if format in ("yolo", ""):  # ultralytics needs the data.yaml's val split (it may name the train images)
            self.load_dataset("yolo", data, "val")
        else:
            from downstream.datasets import write_yolo_layout

            val = self.open_val_split(format, data, "validating on the train split")
            splits["val"] = val if val is not None else splits["train"]
            data = str(write_yolo_layout(splits, out / "data"))
        return train_detector(data, model=recipe.model, epochs=recipe.epochs, imgsz=recipe.imgsz, batch=batch,
                              out_dir=out, device="cpu" if device.type == "cpu" else str(device.index or 0),
                              seed=seed, task=self.yolo_task, rain=rain, **recipe.yolo)


def crop_boxes(label: Any, top: int, left: int, size: int, shape: tuple[int, int],
               min_keep: float = 0.4) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``label``'s boxes (xyxy px) in the ``size``×``size`` window at (top, left) of an image of ``shape``: shifted,
    clipped, and kept when at least ``min_keep`` of a box's area lies inside. Returns ``{"boxes", "classes"}`` of the
    kept boxes and the boolean keep mask over the input's boxes."""
    hh, ww = min(size, shape[0] - top), min(size, shape[1] - left)
    boxes = np.asarray(label["boxes"], np.float32).reshape(-1, 4)
    moved = boxes - np.array([left, top, left, top], np.float32)
    clipped = np.stack([moved[:, 0].clip(0, ww), moved[:, 1].clip(0, hh),
                        moved[:, 2].clip(0, ww), moved[:, 3].clip(0, hh)], axis=1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = kept >= min_keep * np.maximum(area, 1e-6)
    return {"boxes": clipped[keep], "classes": np.asarray(label["classes"]).reshape(-1)[keep]}, keep


register_task(DetectionTask())
