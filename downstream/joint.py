"""Task-driven deraining: fine-tune a derainer jointly with a detection or segmentation loss.

``loss = λ_restore · MSPFN loss(derained, clean) + λ_det · YOLO training loss(derained) + λ_seg · CE(derained)
+ λ_feat · feature consistency`` (MSE between the task model's features of derained and clean images, see
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
derains it, and scores the task metric (detection mAP50 / segmentation mIoU) plus PSNR-Y against clean;
``best/`` is the best task metric. ``summary.json`` holds ``{task, metric, before, after, psnr_y_before,
psnr_y_after}`` (``after`` = the final derainer).
"""

from __future__ import annotations

import json
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
from derain.runtime import all_reduce_grads, autocast, barrier, eval_mode
from derain.synth import image_seed, synthesize
from derain.train import ModelConfig, OptimConfig, RunLogger, Trainer, TrainResult
from downstream.datasets import IGNORE_INDEX, TASKS, load_task_dataset

METRICS = {"detection": "map50", "segmentation": "miou"}


@dataclass
class JointDataConfig:
    """The labelled dataset (see :func:`downstream.datasets.load_task_dataset`)."""

    format: str = "yolo"  # yolo | coco (detection), masks (segmentation)
    path: Any = None  # data.yaml, a coco {images, annotations} dict, or a masks root / dict
    train_split: str = "train"
    val_split: str = "val"


@dataclass
class JointWeights:
    """Loss weights λ; 0 skips the term."""

    restore: float = 1.0
    det: float = 0.0
    seg: float = 0.0
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
    task: str = "segmentation"  # detection | segmentation
    data: JointDataConfig = field(default_factory=JointDataConfig)
    task_model: str | None = None  # detection: .pt or model .yaml; segmentation: segmenter folder
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
    rainy: np.ndarray, clean: np.ndarray, target: Any, size: int, rng: np.random.Generator, min_keep: float = 0.4
) -> tuple[np.ndarray, np.ndarray, Any]:
    """The same random ``size``×``size`` window of ``rainy``, ``clean`` (H×W×3, [0, 1]) and ``target``.

    A side shorter than ``size`` is zero-padded (masks with the ignore label). Detection boxes (xyxy pixels) are
    shifted and clipped; a box keeps its place when at least ``min_keep`` of its area stays inside.
    """
    h, w = clean.shape[:2]
    top, left = int(rng.integers(0, max(h - size, 0) + 1)), int(rng.integers(0, max(w - size, 0) + 1))
    hh, ww = min(size, h), min(size, w)

    def cut(a: np.ndarray, fill: float) -> np.ndarray:
        out = np.full((size, size, *a.shape[2:]), fill, a.dtype)
        out[:hh, :ww] = a[top:top + hh, left:left + ww]
        return out

    if isinstance(target, dict):
        boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4)
        moved = boxes - np.array([left, top, left, top], np.float32)
        clipped = np.stack([moved[:, 0].clip(0, ww), moved[:, 1].clip(0, hh),
                            moved[:, 2].clip(0, ww), moved[:, 3].clip(0, hh)], axis=1)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        keep = kept >= min_keep * np.maximum(area, 1e-6)
        target = {"boxes": clipped[keep], "classes": np.asarray(target["classes"]).reshape(-1)[keep]}
    else:
        target = cut(np.asarray(target), IGNORE_INDEX)
    return cut(rainy, 0.0), cut(clean, 0.0), target


def _collate_targets(items: list[Any], task: str) -> Any:
    if task == "detection":
        return [{"boxes": torch.as_tensor(np.asarray(t["boxes"], np.float32)).reshape(-1, 4),
                 "classes": torch.as_tensor(np.asarray(t["classes"], np.int64)).reshape(-1)} for t in items]
    return torch.stack([torch.as_tensor(np.asarray(m, np.int64)) for m in items])


class JointTrainer(Trainer):
    """Joint derainer fine-tuning described by a :class:`JointConfig` (see the module docstring)."""

    cfg: JointConfig  # type: ignore[assignment]

    def __init__(self, cfg: JointConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> None:
        task = TASKS.get(cfg.task)
        if task is None:
            raise ValueError(f"task must be detection or segmentation, got {cfg.task!r}")
        cfg.task = task
        if not cfg.presets:
            raise ValueError("presets must name at least one rain preset (light, medium, heavy)")
        if cfg.task_model is None:
            raise ValueError("task_model is required (detection: .pt or model .yaml; segmentation: segmenter folder)")
        if cfg.data.path is None:
            raise ValueError("data.path is required")
        w = cfg.weights
        if min(w.restore, w.det, w.seg, w.feat) < 0 or not (w.restore or w.det or w.seg or w.feat):
            raise ValueError(f"loss weights must be >= 0 and not all zero, got {w}")
        if task == "detection" and w.seg or task == "segmentation" and w.det:
            raise ValueError(f"weights: task {task} has no {'seg' if task == 'detection' else 'det'} loss; set it to 0")
        super().__init__(cfg, resume=resume, progress=progress, overwrite=overwrite)  # type: ignore[arg-type]
        self.cfg = cfg
        self.metric = METRICS[task]
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
        if cfg.task == "detection":
            from downstream.detection import load_detector
            from downstream.task_losses import DetectionLoss

            names = list(self.train_src.names)
            path = str(cfg.task_model)
            nc = len(names) if path.endswith((".yaml", ".yml")) else None
            self.detector = load_detector(path, nc=nc, device=self.device)
            if self.detector.nc != len(names):
                raise ValueError(f"detector predicts {self.detector.nc} classes, the dataset has {len(names)}")
            self.task_net: nn.Module = self.detector.model
            if cfg.unfreeze_task:
                self.task_net.train().requires_grad_(True)
            self.det_loss = DetectionLoss(self.detector, freeze=not cfg.unfreeze_task)
        else:
            from downstream.segmentation import load_segmenter

            self.segmenter = load_segmenter(cfg.task_model, device=self.device)
            if self.segmenter.num_classes != len(self.train_src.names):
                raise ValueError(f"segmenter predicts {self.segmenter.num_classes} classes, the dataset has "
                                 f"{len(self.train_src.names)}")
            self.task_net = self.segmenter
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
        extra: dict[str, Any] = {"best_metric": self.best_value}
        if self.cfg.unfreeze_task:
            extra["task_model"] = {k: v.detach().cpu() for k, v in self.task_net.state_dict().items()}
        return extra

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.cfg.unfreeze_task and state.get("task_model") is not None:
            self.task_net.load_state_dict(state["task_model"])

    def sample(self, step: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``(rainy, clean, targets)``: B×3×H×W [0, 1] on the device; targets = box dicts or B×H×W int64 masks."""
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
                r, image, target = crop_sample(r, image, target, cfg.crop, rng)
            elif clean and image.shape[:2] != tuple(clean[0].shape[-2:]):
                raise ValueError(
                    f"joint training needs equal image sizes within a batch: {self.train_src.image_path(index)} "
                    f"is {image.shape[1]}×{image.shape[0]}, another is {clean[0].shape[2]}×{clean[0].shape[1]}; "
                    "set crop=SIZE (e.g. crop=256) to train on random windows")
            rainy.append(to_tensor(r))
            clean.append(to_tensor(image))
            targets.append(target)
        return (torch.stack(rainy).to(self.device), torch.stack(clean).to(self.device),
                _collate_targets(targets, cfg.task))

    def task_loss(self, images: torch.Tensor, targets: Any) -> torch.Tensor:
        """The task loss of ``images`` (B×3×H×W, [0, 1], with grad) against batch ``targets`` (see :meth:`_sample`)."""
        if self.cfg.task == "detection":
            return self.det_loss(images, targets)[0]
        from downstream.task_losses import segmentation_ce

        return segmentation_ce(self.segmenter.logits(images), targets.to(images.device))

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
        task_weight = w.det if self.cfg.task == "detection" else w.seg
        if task_weight:
            task = self.task_loss(shown, targets)
            total = total + task_weight * task
            self.log_extra["loss_task"] = float(task.detach())
        if w.feat:
            from downstream.task_losses import feature_consistency

            model = self.detector if self.cfg.task == "detection" else self.segmenter
            feat = feature_consistency(model, shown, clean)
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
        model = unwrap(self.model)
        if cfg.task == "detection":
            from eval.detection import DetectionEvaluator

            scorer: Any = DetectionEvaluator(self.detector.names)
        else:
            from eval.segmentation import ConfusionMatrix

            scorer = ConfusionMatrix(self.segmenter.num_classes)
        psnr, count = 0.0, 0
        task_mode = self.task_net.training
        with eval_mode(model), torch.inference_mode():
            for i in range(n):
                for k in range(len(cfg.presets)):
                    rainy, clean, target = self.val_pair(i, k)
                    x = to_tensor(rainy).unsqueeze(0).to(self.device)
                    with autocast(self.device, cfg.amp):
                        pred = model(x)
                    pred = pred.float().clamp(0, 1)
                    psnr += float(compute_metrics(pred, to_tensor(clean).unsqueeze(0).to(self.device))["psnr_y"][0])
                    count += 1
                    if cfg.task == "detection":
                        boxes = _collate_targets([target], "detection")
                        scorer.update(self.detector.predict(pred), boxes, [i * len(cfg.presets) + k])
                    else:
                        scorer.update(self.segmenter.predict(pred, amp=cfg.amp).cpu(),
                                      torch.as_tensor(np.asarray(target, np.int64)).unsqueeze(0))
        self.task_net.train(task_mode)
        value = float(scorer.compute()["map50"]) if cfg.task == "detection" else float(scorer.miou())
        return {self.metric: value, "psnr_y": psnr / max(count, 1)}

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
