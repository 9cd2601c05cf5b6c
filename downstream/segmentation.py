"""Semantic segmentation through segmentation-models-pytorch (smp): build, run, save/load and train.

A :class:`Segmenter` takes the benchmark's images as they are (``B×3×H×W`` float RGB in [0, 1], any size)
and hides what smp models need: ImageNet mean/std normalisation and H, W padded (reflect) to a multiple of
the encoder's stride, cropped back afterwards. :meth:`Segmenter.logits` stays differentiable so joint
fine-tuning can back-propagate a segmentation loss into a derainer.

Nothing here downloads: smp models are always built with ``encoder_weights=None``; pretrained weights come
from a local file (``SegmenterConfig.weights``). A trained segmenter is a folder with ``model.safetensors``
and ``segmenter.json`` (config + class names + training step/metrics).

Datasets follow a small protocol: ``classes: list[str]``, ``__len__`` and ``__getitem__(i) -> (image H×W×3
float32 RGB in [0, 1], mask H×W int64 class ids, 255 = ignore)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from derain.checkpoint import WEIGHTS_FILE, read_state_dict, save_state_dict
from derain.config import to_dict
from derain.fileio import atomic_write_text
from derain.imageio import to_tensor
from derain.models.common import pad_to_multiple
from derain.runtime import autocast, autocast_dtype, eval_mode, resolve_device
from downstream.datasets import IGNORE_INDEX
from downstream.tasks import MetricSpec, Task, check_class_names, register_task

META_FILE = "segmenter.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegDataset(Protocol):
    """What :func:`train_segmenter` needs from a dataset (see the module docstring)."""

    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class SegmenterConfig:
    """How to build a segmenter.

    ``arch`` is an smp architecture name ("Unet", "FPN", "DeepLabV3Plus", ...); ``encoder`` an smp encoder
    name ("resnet18", "mobilenet_v2", ...). ``weights`` is an optional LOCAL file (``.pth``/``.safetensors``)
    holding either the whole model's state dict or just the encoder's (e.g. ImageNet resnet18 weights).
    ``decoder_channels`` maps to the architecture's own argument (Unet: one int per stage, or one int that
    is halved per stage; FPN: pyramid channels, with half of it (a multiple of 32, at least 32) for the
    segmentation head; DeepLabV3Plus and others: ``decoder_channels``). ``extra`` is passed to smp as is.
    """

    arch: str = "Unet"
    encoder: str = "resnet18"
    num_classes: int = 2
    classes: list[str] | None = None
    weights: str | None = None
    encoder_depth: int = 5
    decoder_channels: int | list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def class_names(self) -> list[str]:
        """The class names, ``class0``, ``class1``, ... when none were given."""
        if self.classes is None:
            return [f"class{i}" for i in range(self.num_classes)]
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names given for num_classes={self.num_classes}")
        return list(self.classes)


class Segmenter(nn.Module):
    """An smp model plus what it needs to take [0, 1] RGB images of any size.

    Attributes: ``model`` (the smp network), ``cfg``, ``classes``, ``num_classes``, ``size_multiple``.
    ``forward`` is :meth:`logits`.
    """

    def __init__(self, model: nn.Module, cfg: SegmenterConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.classes = cfg.class_names()
        self.num_classes = cfg.num_classes
        stride = int(getattr(getattr(model, "encoder", None), "output_stride", 1))
        self.size_multiple = max(2**cfg.encoder_depth, stride)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` RGB in [0, 1] -> ``B×K×H×W`` class logits (differentiable w.r.t. the images)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected B×3×H×W images, got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        x, _ = pad_to_multiple(x, self.size_multiple)
        return self.model(x)[..., :h, :w]

    forward = logits

    def predict(self, images: torch.Tensor, amp: bool = True) -> torch.Tensor:
        """``B×3×H×W`` RGB in [0, 1] -> ``B×H×W`` int64 class ids (eval mode, inference mode, autocast on CUDA)."""
        with eval_mode(self), torch.inference_mode(), autocast(self.device, enabled=amp):
            return self.logits(images.to(self.device)).argmax(dim=1)


def build_segmenter(cfg: SegmenterConfig) -> Segmenter:
    """Build the smp model for ``cfg`` (never downloads) and load ``cfg.weights`` when given."""
    kwargs: dict[str, Any] = {"encoder_depth": cfg.encoder_depth, **_decoder_kwargs(cfg), **cfg.extra}
    model = smp.create_model(
        cfg.arch, encoder_name=cfg.encoder, encoder_weights=None, in_channels=3, classes=cfg.num_classes, **kwargs
    )
    seg = Segmenter(model, cfg)
    if cfg.weights is not None:
        load_pretrained(seg, cfg.weights)
    return seg


def _decoder_kwargs(cfg: SegmenterConfig) -> dict[str, Any]:
    ch = cfg.decoder_channels
    if ch is None:
        return {}
    arch = cfg.arch.lower()
    if arch in ("unet", "unetplusplus"):
        if isinstance(ch, int):
            ch = [max(ch // 2**i, 4) for i in range(cfg.encoder_depth)]
        return {"decoder_channels": list(ch)}
    if isinstance(ch, list | tuple):
        raise ValueError(f"{cfg.arch} takes one int for decoder_channels, got {ch}")
    if arch == "fpn":
        # FPN's segmentation head uses GroupNorm(32, ·): its width must be a multiple of 32.
        return {"decoder_pyramid_channels": ch, "decoder_segmentation_channels": max(32, ch // 64 * 32)}
    return {"decoder_channels": ch}


def load_pretrained(seg: Segmenter, path: str | Path) -> None:
    """Load a local file into ``seg``: a whole-model state dict, or an encoder-only one (e.g. ImageNet)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmenter weights file not found: {path} (only local files are used)")
    state = read_state_dict(path)
    own = seg.model.state_dict()
    if set(state) == set(own):
        seg.model.load_state_dict(state)
        return
    encoder = getattr(seg.model, "encoder", None)
    if encoder is None:
        raise ValueError(f"{path} does not match the {seg.cfg.arch} model's keys")
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    # smp encoders drop classifier heads (e.g. resnet's fc) before loading, so strict loading fits them.
    encoder.load_state_dict(state)


def save_segmenter(seg: Segmenter, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/segmenter.json`` (config, class names, ``extra``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(seg.model.state_dict(), folder / WEIGHTS_FILE)
    cfg = {**asdict(seg.cfg), "classes": seg.classes, "weights": None}
    meta = {"kind": "segmenter", "config": cfg, **(extra or {})}
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2, sort_keys=True))
    return folder


def read_segmenter_config(path: Path) -> SegmenterConfig:
    """The :class:`SegmenterConfig` a ``segmenter.json`` holds; errors name the file and the key (unknown keys,
    ``encoder_weights``: segmenters are always built without downloaded weights)."""
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a segmenter.json ({exc})") from exc
    config = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: no 'config' object (not written by derainbench's save_segmenter)")
    if "encoder_weights" in config:
        raise ValueError(f"{path}: key 'encoder_weights' is not supported: segmenters are built with "
                         "encoder_weights=None (nothing is downloaded); give a local file as 'weights'")
    known = {f.name for f in fields(SegmenterConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))} in 'config'; "
                         f"known: {', '.join(sorted(known))}")
    try:
        return SegmenterConfig(**config)
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> Segmenter:
    """A segmenter saved by :func:`save_segmenter` (the folder or one of its two files), in eval mode."""
    path = Path(path)
    folder = path.parent if path.name in (WEIGHTS_FILE, META_FILE) else path
    for name in (META_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"segmenter checkpoint incomplete: {folder / name} not found")
    cfg = read_segmenter_config(folder / META_FILE)
    try:
        seg = build_segmenter(cfg)
    except (TypeError, KeyError, ValueError) as exc:  # smp: unknown arch/encoder, wrong-typed options
        raise ValueError(f"{folder / META_FILE}: cannot build the segmenter it describes: {exc}") from exc
    meta = json.loads((folder / META_FILE).read_text())
    try:
        seg.model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except RuntimeError as exc:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not fit the model {folder / META_FILE} describes: "
                         f"{str(exc).splitlines()[0]}") from exc
    seg.meta = meta  # type: ignore[attr-defined]
    return seg.to(resolve_device(device)).eval()


# ------------------------------------------------------------------------------------------------- training
class RandomCrops(torch.utils.data.Dataset):
    """Sample ``k`` is a seeded random crop (+ horizontal flip) of a random dataset item.

    Returns ``(3×S×S float image, S×S int64 mask)``; items smaller than ``S`` are padded (image 0, mask 255).
    Deterministic per (seed, k), so DataLoader workers reproduce the same stream. ``rain`` (a bound
    :class:`downstream.rain_augment.TrainingRain`) rains the whole clean image before the crop, drawn per (its seed,
    k, image).
    """

    def __init__(self, dataset: SegDataset, crop: int, length: int, seed: int = 0, rain: Any = None) -> None:
        self.dataset, self.crop, self.length, self.seed, self.rain = dataset, crop, length, seed, rain

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, k))
        index = int(rng.integers(len(self.dataset)))
        image, mask = self.dataset[index]
        image = np.asarray(image, np.float32)
        if self.rain is not None:
            image = self.rain(image, index, k)
        image, mask = _pad_pair(image, np.asarray(mask, np.int64), self.crop)
        h, w = mask.shape
        y, x = int(rng.integers(h - self.crop + 1)), int(rng.integers(w - self.crop + 1))
        image, mask = image[y:y + self.crop, x:x + self.crop], mask[y:y + self.crop, x:x + self.crop]
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(mask.copy())


def _pad_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    ph, pw = max(size - mask.shape[0], 0), max(size - mask.shape[1], 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    return image, mask


def evaluate_miou(seg: Segmenter, dataset: SegDataset, limit: int | None = None) -> float:
    """Dataset mIoU (confusion matrix summed over all images, one image at a time, ignore 255)."""
    def batches() -> Iterator[tuple[torch.Tensor, list[np.ndarray], list[int]]]:
        for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
            image, mask = dataset[i]
            yield to_tensor(np.asarray(image, np.float32))[None], [np.asarray(mask, np.int64)], [i]

    return float(SegmentationTask().evaluate(seg, batches(), seg.classes)["miou"])


def train_segmenter(
    train_dataset: SegDataset,
    cfg: SegmenterConfig,
    out_dir: str | Path,
    *,
    iters: int = 2000,
    epochs: int | None = None,
    batch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    crop_size: int = 256,
    device: str | torch.device = "auto",
    seed: int = 0,
    val_dataset: SegDataset | None = None,
    val_every: int | None = None,
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = True,
    rain: Any = None,
) -> Path:
    """Train ``cfg``'s segmenter with cross-entropy (ignore 255), AdamW and a cosine learning-rate decay.

    ``rain`` (a :class:`downstream.rain_augment.RainAugment`; its seed defaults to ``seed``) rains training images
    before the crop, anew for every sample (see :class:`RandomCrops`); validation stays clean, and the checkpoints'
    ``segmenter.json`` records the rain (``rain``).

    ``epochs`` (if given) overrides ``iters`` as ``epochs × ceil(len(train) / batch_size)`` steps. Every
    ``val_every`` steps (default: 5 times per run) and at the end, ``out_dir/last`` is written, and
    ``out_dir/best`` when val mIoU improved (or, without a val set, the mean training loss since the last
    check). Returns the ``best`` folder.
    """
    bound = None
    if rain is not None:
        from downstream.rain_augment import bind_to_dataset

        rain = rain.resolve(seed)
        bound = bind_to_dataset(rain, train_dataset)
    torch.manual_seed(seed)
    dev = resolve_device(device)
    if cfg.classes is None and getattr(train_dataset, "classes", None):
        cfg = SegmenterConfig(**{**asdict(cfg), "classes": list(train_dataset.classes)})
    seg = build_segmenter(cfg).to(dev).train()
    steps = epochs * math.ceil(len(train_dataset) / batch_size) if epochs is not None else iters
    if steps < 1:
        raise ValueError(f"train_segmenter needs at least one step, got iters={iters}, epochs={epochs}")
    check_every = val_every or max(steps // 5, 1)
    loader = torch.utils.data.DataLoader(
        RandomCrops(train_dataset, crop_size, steps * batch_size, seed, rain=bound), batch_size=batch_size,
        num_workers=num_workers, drop_last=True, pin_memory=dev.type == "cuda",
    )
    opt = torch.optim.AdamW(seg.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    scaler = torch.amp.GradScaler(dev.type, enabled=amp and autocast_dtype(dev) == torch.float16)
    out_dir = Path(out_dir)
    best, losses = -math.inf, []
    bar = tqdm(loader, total=steps, desc="train segmenter", disable=not progress, dynamic_ncols=True)
    for step, (images, masks) in enumerate(bar, start=1):
        images, masks = images.to(dev, non_blocking=True), masks.to(dev, non_blocking=True)
        with autocast(dev, enabled=amp):
            loss = F.cross_entropy(seg.logits(images).float(), masks, ignore_index=IGNORE_INDEX)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite segmentation loss at step {step}")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if step % check_every == 0 or step == steps:
            metrics = {"train_loss": float(np.mean(losses))}
            if val_dataset is not None:
                metrics["val_miou"] = evaluate_miou(seg, val_dataset)
            score = metrics.get("val_miou", -metrics["train_loss"])
            losses = []
            info = {"step": step, "metrics": metrics, **({"rain": to_dict(rain)} if rain is not None else {})}
            save_segmenter(seg, out_dir / "last", extra=info)
            if score > best:
                best = score
                save_segmenter(seg, out_dir / "best", extra=info)
            if progress:
                bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    bar.close()
    return out_dir / "best"


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack ``H×W×3`` float arrays in [0, 1] into a ``B×3×H×W`` float32 tensor."""
    return torch.stack([to_tensor(np.asarray(im, np.float32)) for im in images])


# ------------------------------------------------------------------------------------------------------- the task
@dataclass
class SegmenterRecipe:
    """How `derainbench train-task` trains a segmenter: an smp model with ``encoder_weights=None`` (or ``weights``: a
    local file for the encoder or the whole model), trained by :func:`train_segmenter`."""

    arch: str = "Unet"
    encoder: str = "resnet18"
    weights: str | None = None
    iters: int = 1500
    crop: int = 256
    lr: float = 1e-3


class SegmentationTask(Task):
    """Semantic segmentation: smp models, mIoU from the confusion matrix summed over the dataset; labels are ``H×W``
    int64 class maps (255 = ignore)."""

    name = "segmentation"
    title = "Segmentation"
    aliases = ("seg",)
    formats = ("masks", "cityscapes", "acdc")
    real_rain_formats = ("acdc",)
    metrics = (MetricSpec("miou", "mIoU"), MetricSpec("pixel_acc", "pixel accuracy", "pixel acc."))
    per_class = {"iou_per_class": MetricSpec("iou", "IoU")}
    val_metric = "miou"
    image_metric = MetricSpec("miou", "mIoU")
    protocol_text = "mIoU from the confusion matrix summed over the dataset"
    scoring_text = "mIoU from the summed confusion matrix, 255 ignored"
    grid_text = "the predicted mask tinted over the image in grey (background untinted)."
    model_help = "a segmenter checkpoint folder (model.safetensors + segmenter.json)"
    recipe = SegmenterRecipe

    def load_dataset(self, format: str, path: Any, split: str = "val") -> Any:
        """``masks``: see :func:`downstream.datasets.open_mask_dataset`; ``cityscapes``: see
        :func:`downstream.cityscapes.open_cityscapes`; ``acdc``: see :func:`downstream.acdc.open_acdc`."""
        if format == "cityscapes":
            from downstream.cityscapes import open_cityscapes

            return open_cityscapes(path, split)
        if format == "acdc":
            from downstream.acdc import open_acdc

            return open_acdc(path, split)
        from downstream.datasets import open_mask_dataset

        return open_mask_dataset(path, split)

    def collate(self, labels: Sequence[Any]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(np.asarray(m, np.int64)) for m in labels])

    def crop(self, label: Any, top: int, left: int, size: int, shape: tuple[int, int]) -> np.ndarray:
        """The mask window, padded with the ignore label where it reaches past the image."""
        mask = np.asarray(label)
        out = np.full((size, size), IGNORE_INDEX, mask.dtype)
        window = mask[top:top + size, left:left + size]
        out[:window.shape[0], :window.shape[1]] = window
        return out

    def load_model(self, path: str | Path, names: Sequence[str], device: str | torch.device = "cpu") -> Segmenter:
        seg = load_segmenter(path, device=device)
        if seg.num_classes != len(names):
            raise ValueError(f"the dataset has {len(names)} classes but the segmenter {path} predicts "
                             f"{seg.num_classes}; train one for this dataset with `derainbench train-task`")
        check_class_names(seg.cfg.classes, names, path)  # segmenter.json's classes, when it gives them
        return seg

    def module(self, model: Segmenter) -> nn.Module:
        return model

    def predict(self, model: Segmenter, images: torch.Tensor, imgsz: int | None = None, conf: float = 0.001,
                iou: float = 0.7) -> list[torch.Tensor]:
        return list(model.predict(images).cpu())

    def evaluator(self, names: Sequence[str]) -> Any:
        from downstream.metrics import SegmentationEvaluator

        return SegmentationEvaluator(names)

    def loss(self, model: Segmenter, freeze: bool = True) -> Any:
        from downstream.task_losses import segmentation_ce

        if freeze:
            model.eval().requires_grad_(False)
        return lambda images, labels: segmentation_ce(model.logits(images), labels.to(images.device))

    def features(self, model: Segmenter, images: torch.Tensor) -> list[torch.Tensor]:
        """The smp encoder's outputs without the first one (the normalised input itself)."""
        from downstream.task_losses import tap

        with tap(model.model.encoder) as found:
            model.logits(images)
        return found[1:]

    def save_label(self, folder: Path, stem: str, label: Any) -> None:
        from derain.imageio import write_mask

        write_mask(folder / f"{stem}.mask.png", np.asarray(label))

    def load_label(self, folder: Path, stem: str) -> np.ndarray | None:
        from downstream.datasets import read_mask

        path = folder / f"{stem}.mask.png"
        return read_mask(path) if path.is_file() else None

    def describe(self, label: Any) -> str:
        return "label mask"

    def draw(self, ax: Any, image: Any, label: Any, names: Sequence[str], color_of: Any, objects: int | None = None,
             conf: float = 0.25, px_per_pt: float = 1.0) -> set[int]:
        from downstream.drawing import mask_overlay

        ax.imshow(np.clip(mask_overlay(image, label, names, color_of), 0, 1), interpolation="nearest")
        return {int(k) for k in np.unique(label) if k != IGNORE_INDEX}

    def train(self, recipe: SegmenterRecipe, data: Any, out: Path, device: torch.device, seed: int, batch: int,
              progress: bool = True, format: str = "masks", rain: Any = None) -> Path:
        for key in ("iters", "crop"):
            if getattr(recipe, key) < 1:
                raise ValueError(f"recipe.{key} must be >= 1, got {getattr(recipe, key)}")
        if not (math.isfinite(recipe.lr) and recipe.lr > 0):
            raise ValueError(f"recipe.lr must be a positive number, got {recipe.lr}")
        train = self.load_dataset(format, data, split="train")
        val = self.open_val_split(format, data, "OUT/best is chosen on the training loss")
        cfg = SegmenterConfig(arch=recipe.arch, encoder=recipe.encoder, num_classes=len(train.names),
                              classes=list(train.names), weights=recipe.weights)
        try:
            return train_segmenter(train, cfg, out, iters=recipe.iters, batch_size=batch, lr=recipe.lr,
                                   crop_size=recipe.crop, device=device, seed=seed, val_dataset=val,
                                   progress=progress, rain=rain)
        except FloatingPointError as exc:
            raise RuntimeError(f"{exc}: training diverged with recipe.lr={recipe.lr:g}; try a smaller recipe.lr "
                               f"(default {SegmenterRecipe.lr:g})") from exc


register_task(SegmentationTask())
