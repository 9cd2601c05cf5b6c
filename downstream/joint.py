"""Task-driven deraining: fine-tune a derainer jointly with a task loss (any registered task: detection,
segmentation, instance segmentation; see :mod:`downstream.tasks`).

``loss = λ_restore · MSPFN loss(derained, clean) + λ_task · task training loss(derained) + λ_feat · feature
consistency`` (the task's own loss: YOLO's detection or segmentation loss, pixel cross-entropy; feature consistency:
MSE between the task model's features of derained and clean images, see
:func:`downstream.task_losses.feature_consistency`); a zero weight skips that term. The task model is frozen
by default (eval mode, no parameter updates), but gradients flow through it into the derainer.
:class:`JointTrainer` reuses :class:`derain.train.Trainer`'s loop: progress bar, ``log.csv`` (with one column
per loss term), atomic ``last/``/``best/`` derainer checkpoints (``load_derainer(folder)`` loads them), exact
``--resume``, SIGTERM handling, AMP, DDP.

Batches: each step draws ``batch_size`` labelled clean images with a generator seeded by (seed, step) and rains
them on the fly with a seeded preset. Images of one batch must share a size (true for generated scenes); set
``crop`` to cut a seeded random ``crop``×``crop`` window from each (boxes shifted and clipped, masks padded with
the ignore label) when a dataset's sizes differ. With ``unfreeze_task`` under ``torchrun`` the task model's
gradients are averaged over ranks (its BatchNorm layers use per-rank batch statistics, as in plain DDP).
Validation (before training, every ``val_every`` steps and at the end) rains the val split deterministically,
derains it, and scores the task's validation metric (``Task.val_metric``: detection mAP50, segmentation mIoU,
instance mask mAP50) plus PSNR-Y against clean; ``best/`` is the best task metric. ``summary.json`` holds
``{task, metric, before, after, psnr_y_before, psnr_y_after}`` (``after`` = the final derainer).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from derain.checkpoint import unwrap
from derain.data import derive_seed, epoch_permutation
from derain.fileio import atomic_write_text
from derain.imageio import to_tensor
from derain.runtime import all_reduce_grads, autocast, barrier, eval_mode, validation_copy
from derain.synth import image_seed, synthesize
from derain.train import ModelConfig, OptimConfig, RunLogger, Trainer, TrainResult
from downstream.tasks import Task, get_task, load_task_dataset


@dataclass
class JointDataConfig:
    """The labelled dataset (see :func:`downstream.tasks.load_task_dataset`)."""

    format: str = "yolo"  # one of the task's formats (yolo, coco, masks, cityscapes, ...; see README "Dataset formats")
    path: Any = None  # data.yaml, a coco {images, annotations} dict, or a masks root / dict
    train_split: str = "train"
    val_split: str = "val"


@dataclass
class JointWeights:
    """Loss weights λ; 0 skips the term."""

    restore: float = 1.0
    task: float = 0.0  # the task's training loss
    feat: float = 0.0  # feature consistency through the task model


@dataclass
class JointConfig:
    name: str = "joint"
    out: str = "runs/joint"
    seed: int = 0
    iters: int = 1000
    batch_size: int = 4  # global batch of whole images (split over torchrun ranks)
    crop: int | None = None  # cut a random crop×crop window per image (needed when image sizes differ)
    device: str = "auto"
    amp: bool = True
    log_every: int = 10
    val_every: int = 500
    save_every: int = 500
    val_limit: int | None = None  # validate on at most this many val images
    derainer: ModelConfig = field(default_factory=ModelConfig)  # init: checkpoint folder or weights file
    task: str = "segmentation"  # a registered task: detection | segmentation | instance
    data: JointDataConfig = field(default_factory=JointDataConfig)
    task_model: str | None = None  # detection, instance: .pt or model .yaml; segmentation: segmenter folder
    presets: list[str] = field(default_factory=lambda: ["heavy"])  # rain presets drawn per image
    weights: JointWeights = field(default_factory=JointWeights)
    unfreeze_task: bool = False  # also train the task model
    task_lr: float | None = None  # its base lr (decayed like optim.lr); None = optim.lr
    optim: OptimConfig = field(default_factory=OptimConfig)
    # MSPFN loss settings (edge weight on the Laplacian term, Charbonnier eps)
    edge_weight: float = 0.05
    eps: float = 1e-3

    @property
    def model(self) -> ModelConfig:
        """The derainer config under the name :class:`derain.train.Trainer` reads."""
        return self.derainer


def crop_sample(
    task: Task, rainy: np.ndarray, clean: np.ndarray, label: Any, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, Any]:
    """The same random ``size``×``size`` window of ``rainy``, ``clean`` (H×W×3, [0, 1]) and ``label`` (cut by
    ``task.crop``: boxes shifted and clipped, masks padded with the ignore label). A side shorter than ``size`` is
    zero-padded."""
    h, w = clean.shape[:2]
    top, left = int(rng.integers(0, max(h - size, 0) + 1)), int(rng.integers(0, max(w - size, 0) + 1))
    hh, ww = min(size, h), min(size, w)

    def cut(a: np.ndarray) -> np.ndarray:
        out = np.zeros((size, size, *a.shape[2:]), a.dtype)
        out[:hh, :ww] = a[top:top + hh, left:left + ww]
        return out

    return cut(rainy), cut(clean), task.crop(label, top, left, size, (h, w))


class JointTrainer(Trainer):
    """Joint derainer fine-tuning described by a :class:`JointConfig` (see the module docstring)."""

    cfg: JointConfig  # type: ignore[assignment]
    run_files = (*Trainer.run_files, "before.json", "summary.json")

    def __init__(self, cfg: JointConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> None:
        self.task = get_task(cfg.task)
        cfg.task = self.task.name
        if not cfg.presets:
            raise ValueError("presets must name at least one rain preset (light, medium, heavy)")
        if cfg.task_model is None:
            raise ValueError(f"task_model is required ({self.task.name}: {self.task.model_help})")
        if cfg.data.path is None:
            raise ValueError("data.path is required")
        if cfg.crop is not None and cfg.crop < 1:
            raise ValueError(f"crop must be a positive number of pixels (a crop×crop window per image), got {cfg.crop}")
        w = cfg.weights
        if min(w.restore, w.task, w.feat) < 0 or not (w.restore or w.task or w.feat):
            raise ValueError(f"loss weights must be >= 0 and not all zero, got {w}")
        super().__init__(cfg, resume=resume, progress=progress, overwrite=overwrite)  # type: ignore[arg-type]
        self.cfg = cfg
        self.metric = self.task.val_metric
        self.metric_mode = "max" if self.task.metric(self.metric).higher_is_better else "min"
        self.extra_log_fields = ("loss_restore", "loss_task", "loss_feat", f"val_{self.metric}")
        self.before: dict[str, float] | None = None
        self.latest: tuple[int, dict[str, float]] | None = None

    # -- hooks of Trainer ---------------------------------------------------------------------------
    def build(self) -> None:
        super().build()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        before = self.run_dir / "before.json"
        if self.resume and before.is_file():
            self.before = json.loads(before.read_text())
        elif self.dist.is_main:
            self.before = self.evaluate()
            atomic_write_text(before, json.dumps(self.before, indent=2))
            tqdm.write(f"before: val {self.metric} {self.before[self.metric]:.4f}, "
                       f"psnr_y {self.before['psnr_y']:.3f} dB")
        barrier(self.dist)

    def make_loss(self) -> nn.Module:
        from derain.losses import MSPFNLoss

        return MSPFNLoss(edge_weight=self.cfg.edge_weight, eps=self.cfg.eps)

    def build_data(self) -> None:
        cfg = self.cfg
        self.train_src = load_task_dataset(cfg.task, cfg.data.format, cfg.data.path, cfg.data.train_split)
        self.val_src = load_task_dataset(cfg.task, cfg.data.format, cfg.data.path, cfg.data.val_split)
        if len(self.train_src) == 0:
            raise ValueError(f"{cfg.data.path} ({cfg.data.train_split}) has no images")
        self.task_model = self.task.load_model(cfg.task_model, self.train_src.names, device=self.device)
        self.task_loss = self.task.loss(self.task_model, freeze=not cfg.unfreeze_task)
        self.task_net = self.task.module(self.task_model)
        self.task_net.train(cfg.unfreeze_task).requires_grad_(cfg.unfreeze_task)

    def param_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = [{"params": list(self.model.parameters())}]
        if self.cfg.unfreeze_task:
            scale = (self.cfg.task_lr / self.cfg.optim.lr) if self.cfg.task_lr is not None else 1.0
            groups.append({"params": list(self.task_net.parameters()), "lr_scale": scale})
        return groups

    def log_start(self, logger: RunLogger) -> None:
        if self.before is not None:  # the starting derainer's validation, so curves begin at step 0
            logger.log(0, val_psnr_y=self.before["psnr_y"], **{f"val_{self.metric}": self.before[self.metric]})

    def after_backward(self) -> None:
        if self.cfg.unfreeze_task:  # DDP wraps only the derainer; keep the task model identical on every rank
            all_reduce_grads(self.task_net.parameters(), self.dist)

    def extra_state(self) -> dict[str, Any]:
        """The task model's weights when it trains too (the best value is the base state's ``best_value``)."""
        if not self.cfg.unfreeze_task:
            return {}
        return {"task_model": {k: v.detach().cpu() for k, v in self.task_net.state_dict().items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.cfg.unfreeze_task and state.get("task_model") is not None:
            self.task_net.load_state_dict(state["task_model"])

    def sample(self, step: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``(rainy, clean, targets)``: B×3×H×W [0, 1] on the device; targets as the task collates them."""
        cfg = self.cfg
        n, b = len(self.train_src), cfg.batch_size // self.dist.world_size
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, step, 3))
        presets = torch.randint(len(cfg.presets), (cfg.batch_size,), generator=g).tolist()
        rainy, clean, targets = [], [], []
        for j in range(self.dist.rank * b, (self.dist.rank + 1) * b):
            sample = step * cfg.batch_size + j
            index = epoch_permutation(cfg.seed, n, sample // n)[sample % n]
            image, target = self.train_src[index]
            r, _ = synthesize(image, cfg.presets[presets[j]], seed=derive_seed(cfg.seed, step, j, 4))
            if cfg.crop:
                rng = np.random.default_rng(derive_seed(cfg.seed, step, j, 5))
                r, image, target = crop_sample(self.task, r, image, target, cfg.crop, rng)
            elif clean and image.shape[:2] != tuple(clean[0].shape[-2:]):
                raise ValueError(
                    f"joint training needs equal image sizes within a batch: {self.train_src.image_path(index)} "
                    f"is {image.shape[1]}×{image.shape[0]}, another is {clean[0].shape[2]}×{clean[0].shape[1]}; "
                    "set crop=SIZE (e.g. crop=256) to train on random windows")
            rainy.append(to_tensor(r))
            clean.append(to_tensor(image))
            targets.append(target)
        return torch.stack(rainy).to(self.device), torch.stack(clean).to(self.device), self.task.collate(targets)

    def train_step(self, batch: Any) -> float:
        rainy, clean, targets = batch
        w = self.cfg.weights
        with autocast(self.device, self.cfg.amp):
            derained = self.net(rainy)
        derained = derained.float()
        total = derained.new_zeros(())
        self.log_extra = {}
        if w.restore:
            restore = self.loss_fn(derained, clean)
            total = total + w.restore * restore
            self.log_extra["loss_restore"] = float(restore.detach())
        shown = derained.clamp(0, 1)  # what the task model sees at test time
        if w.task:
            task = self.task_loss(shown, targets)
            total = total + w.task * task
            self.log_extra["loss_task"] = float(task.detach())
        if w.feat:
            from downstream.task_losses import feature_consistency

            feat = feature_consistency(lambda x: self.task.features(self.task_model, x), shown, clean)
            total = total + w.feat * feat
            self.log_extra["loss_feat"] = float(feat.detach())
        return self.optimize(total)

    def validate(self, logger: RunLogger | None, bar: tqdm) -> None:
        if self.dist.is_main:
            scores = self.evaluate()
            self.latest = (self.step, scores)
            value = scores[self.metric]
            bar.write(f"step {self.step}: val {self.metric} {value:.4f}, psnr_y {scores['psnr_y']:.3f} dB")
            if logger:
                logger.log(self.step, val_psnr_y=scores["psnr_y"], **{f"val_{self.metric}": value})
            if self.is_better(value):
                self.best_value = value
                self.save("best")
        barrier(self.dist)

    # -- evaluation ---------------------------------------------------------------------------------
    def val_pair(self, i: int, k: int) -> tuple[np.ndarray, np.ndarray, Any]:
        """Val image ``i`` rained with preset ``k`` (seeded by its file name): ``(rainy, clean, target)``."""
        image, target = self.val_src[i]
        name = Path(self.val_src.image_path(i)).name
        rainy, _ = synthesize(image, self.cfg.presets[k], seed=image_seed(self.cfg.seed + 1000 * k, name))
        return rainy, image, target

    def evaluate(self) -> dict[str, float]:
        """Task metric and mean PSNR-Y of the derained val images (each val image × each preset)."""
        from derain.metrics import compute_metrics

        cfg = self.cfg
        n = len(self.val_src) if cfg.val_limit is None else min(cfg.val_limit, len(self.val_src))
        model, layout = validation_copy(unwrap(self.model), self.device)
        psnr: list[float] = []

        def derained() -> Iterator[tuple[torch.Tensor, list[Any], list[int]]]:
            for i in range(n):
                for k in range(len(cfg.presets)):
                    rainy, clean, target = self.val_pair(i, k)
                    with autocast(self.device, cfg.amp):
                        pred = model(to_tensor(rainy).unsqueeze(0).to(self.device).contiguous(memory_format=layout))
                    pred = pred.float().clamp(0, 1)
                    clean_t = to_tensor(clean).unsqueeze(0).to(self.device)
                    psnr.append(float(compute_metrics(pred, clean_t)["psnr_y"][0]))
                    yield pred, [target], [i * len(cfg.presets) + k]

        task_mode = self.task_net.training
        with eval_mode(model), torch.inference_mode():
            scores = self.task.evaluate(self.task_model, derained(), self.train_src.names)
        self.task_net.train(task_mode)
        return {self.metric: float(scores[self.metric]), "psnr_y": sum(psnr) / max(len(psnr), 1)}

    def after_training(self, result: TrainResult) -> None:
        """Write ``summary.json`` when the run reached ``iters`` (under the run folder's lock)."""
        if not result.interrupted and self.dist.is_main:
            after = self.latest[1] if self.latest and self.latest[0] == self.step else self.evaluate()
            assert self.before is not None
            summary = {"task": self.cfg.task, "metric": self.metric, "before": self.before[self.metric],
                       "after": after[self.metric], "psnr_y_before": self.before["psnr_y"],
                       "psnr_y_after": after["psnr_y"], "steps": self.step}
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def joint_train(cfg: JointConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Run joint fine-tuning as configured; see :class:`JointTrainer`."""
    return JointTrainer(cfg, resume=resume, progress=progress, overwrite=overwrite).run()
