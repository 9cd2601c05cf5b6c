"""Iteration-based derainer training: the MSPFN paper recipe by default, resumable exactly, DDP-ready.

A run folder ``<out>/<name>/`` holds ``config.yaml``, ``log.csv`` (every logged step), ``last/`` and
``best/`` checkpoints (``model.safetensors`` + ``model.json``) and ``last/state.pt`` (optimizer, step, RNG).
Batches are drawn from a generator seeded by (seed, step), so a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
import signal
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from derain.checkpoint import (
    CheckpointError,
    atomic_write_text,
    build_derainer,
    folder_lock,
    is_checkpoint,
    load_derainer,
    load_weights,
    read_meta,
    recover_dir,
    replace_dir,
    safe_torch_load,
    save_checkpoint,
    unwrap,
)
from derain.config import ConfigError, check_name, read_yaml, save_config, to_dict
from derain.fileio import atomic_path
from derain.imageio import to_tensor
from derain.losses import LOSSES, build_loss
from derain.runtime import (
    DistInfo,
    all_reduce_mean,
    any_rank,
    autocast,
    autocast_dtype,
    barrier,
    cleanup_distributed,
    eval_mode,
    init_distributed,
    resolve_device,
    validation_copy,
)


@dataclass
class SourceConfig:
    """Where image pairs come from: a paired root, explicit folders, or clean images rained on the fly."""

    pairs: str | None = None  # root with rain/+norain/, input/+target/ or rainy/+gt/
    rainy: str | None = None  # explicit rainy folder (needs ``clean``)
    clean: str | None = None  # clean folder; alone it is rained on the fly; "skimage" = bundled photos
    presets: list[str] = field(default_factory=lambda: ["light"])  # for on-the-fly rain
    seed: int = 0  # rain seed for on-the-fly pairs
    variants: int = 1  # on-the-fly rain patterns per clean image and preset
    skip: int = 0  # drop the first ``skip`` images (e.g. to hold out validation photos)
    limit: int | None = None  # keep at most this many images
    skip_bad: bool = False  # skip (and count) unmatched/unreadable pairs instead of failing


@dataclass
class ModelConfig:
    # A registered derainer (``derainbench models`` lists them); None: the architecture ``init`` holds (a checkpoint
    # folder's, or a weights file's as load_derainer reads it, e.g. a Restormer release), else mspfn.
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # keyword overrides of its config
    init: str | None = None  # start from these weights (checkpoint folder or .safetensors/.pth)


@dataclass
class OptimConfig:
    """Adam and an lr schedule (``SCHEDULES``): ``exponential``, MSPFN's official continuous decay
    ``lr · decay_rate^(step / decay_steps) + min_lr``; ``multistep``, PReNet's ``lr · gamma^(milestones passed)``."""

    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "exponential"
    decay_rate: float = 0.8  # exponential
    decay_steps: int = 20000  # exponential
    min_lr: float = 1e-6  # exponential
    milestones: list[int] = field(default_factory=list)  # multistep: steps after which the lr is multiplied by gamma
    gamma: float = 0.2  # multistep
    grad_clip: float | None = None  # max gradient norm; None = no clipping (the paper's recipe)


@dataclass
class LossConfig:
    """The training loss by name (``derain.losses.LOSSES``): ``mspfn`` (Charbonnier + edge_weight × Charbonnier of
    the Laplacian, on [-1, 1]; uses edge_weight and eps), ``charbonnier`` (eps) or ``ssim`` (1 − SSIM, PReNet's)."""

    name: str = "mspfn"
    edge_weight: float = 0.05
    eps: float = 1e-3


@dataclass
class TrainConfig:
    name: str = "mspfn"
    out: str = "runs/train"
    seed: int = 0
    iters: int = 100000
    batch_size: int = 12  # global batch (split over torchrun ranks)
    patch_size: int = 96
    augment: str = "dihedral"  # one transform per batch: dihedral (paper) | flips (keeps rain vertical) | none
    device: str = "auto"
    amp: bool = True  # bf16/fp16 autocast on CUDA; ignored on CPU
    log_every: int = 10
    val_every: int = 1000
    save_every: int = 1000
    val_limit: int | None = None  # validate on at most this many images
    # Hold out this many training pairs as the validation set (seeded; pairs sharing a clean image stay together).
    # Model selection (best/) then never sees a test set. Exclusive with ``val``.
    val_holdout: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    train: SourceConfig = field(default_factory=SourceConfig)
    val: SourceConfig | None = None
    # Test sets by name, scored once when training ends, with best/ (last weights without validation):
    # ``test.json`` in the run folder. Never used for model selection.
    test: dict[str, SourceConfig | None] = field(default_factory=dict)  # ``test.NAME=null`` drops one
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint on disk is kept untouched."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    best_value: float | None  # the best validation value of ``metric`` (None without validation)
    signal: int | None = None
    metric: str = "psnr_y"


def _exponential(step: int, cfg: OptimConfig) -> float:
    return cfg.lr * cfg.decay_rate ** (step / cfg.decay_steps) + cfg.min_lr


def _multistep(step: int, cfg: OptimConfig) -> float:
    return cfg.lr * cfg.gamma ** sum(step >= m for m in cfg.milestones)


SCHEDULES = {"exponential": _exponential, "multistep": _multistep}  # OptimConfig.schedule


def lr_at(step: int, cfg: OptimConfig) -> float:
    """The learning rate at ``step`` under ``cfg.schedule``."""
    return SCHEDULES[cfg.schedule](step, cfg)


def build_source(cfg: SourceConfig) -> Any:
    """A pair source (``len`` + ``get_pair(i)``) for the configured data; errors name what is missing."""
    from derain import data

    if cfg.pairs:
        pairs = data.find_pairs(cfg.pairs, skip_bad=cfg.skip_bad)
        return data.PairedImages(_select(pairs, cfg))
    if cfg.rainy:
        if not cfg.clean:
            raise ValueError("data source has 'rainy' but no 'clean' folder to pair it with")
        pairs = data.pairs_from_dirs(cfg.rainy, cfg.clean, skip_bad=cfg.skip_bad)
        return data.PairedImages(_select(pairs, cfg))
    if cfg.clean:
        if cfg.clean == "skimage":
            from derain.samples import sample_photos

            images: Any = list(sample_photos().values())
        else:
            from derain.imageio import list_images

            images = list_images(cfg.clean)
        images = _select(images, cfg)
        return data.SynthPairs(images, preset=list(cfg.presets), seed=cfg.seed, variants=cfg.variants)
    raise ValueError("data source needs one of: pairs (a paired root), rainy+clean folders, or clean")


def _select(items: list, cfg: SourceConfig) -> list:
    items = items[cfg.skip :]
    if cfg.limit is not None:
        items = items[: cfg.limit]
    if not items:
        raise ValueError(f"data source {cfg} selects no images")
    return items


class Trainer:
    """Runs one training job described by a :class:`TrainConfig`.

    Extension points (public; :class:`downstream.joint.JointTrainer` uses only these): :meth:`build` (model, data,
    optimizer, loss), :meth:`build_data`, :meth:`param_groups`, :meth:`make_loss`, :meth:`sample` and
    :meth:`train_step` (one batch; call :meth:`optimize` with the loss), :meth:`after_backward`, :meth:`validate`
    (keep the best with :meth:`is_better` and :meth:`save`), :meth:`log_start`, :meth:`extra_state` /
    :meth:`load_extra_state` (more state in checkpoints) and :meth:`after_training`. :attr:`metric` names the
    validation value "best" is chosen on and :attr:`metric_mode` its direction.
    """

    metric: str = "psnr_y"
    metric_mode: str = "max"  # "max": higher is better; "min": lower is better
    # What a run writes in its folder: all that --overwrite deletes (and the `--help` of train and joint lists).
    run_files: tuple[str, ...] = ("last", "best", "log.csv", "config.yaml", "test.json", "tb")

    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> None:
        if resume and overwrite:
            raise ValueError("--resume continues the run and --overwrite discards it: give one of them")
        self.cfg, self.resume, self.progress, self.overwrite = cfg, resume, progress, overwrite
        self.dist: DistInfo = init_distributed(cfg.device)
        self.device = resolve_device(cfg.device, self.dist.local_rank if self.dist.enabled else None)
        self.run_dir = Path(cfg.out) / check_name(cfg.name, "run name")
        self.step = 0
        self.best_value: float | None = None  # best validation value of self.metric so far
        self._stop_signal: int | None = None
        self.extra_log_fields: tuple[str, ...] = ()  # more log.csv columns (subclasses)
        self.log_extra: dict[str, float] = {}  # their values at the latest step

    # -- setup --------------------------------------------------------------------------------------
    def _check(self) -> None:
        """Counts that must be positive, and a fresh run that would overwrite another's checkpoints."""
        cfg = self.cfg
        for key in ("iters", "batch_size", "log_every", "val_every", "save_every", "patch_size"):
            value = getattr(cfg, key, None)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be a positive number, got {value}")
        if cfg.optim.decay_steps < 1:
            raise ConfigError(f"optim.decay_steps must be a positive number of steps, got {cfg.optim.decay_steps}")
        if cfg.optim.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.optim.schedule!r}")
        if getattr(cfg, "loss", None) is not None and cfg.loss.name not in LOSSES:
            raise ConfigError(f"loss.name must be one of {', '.join(LOSSES)}, got {cfg.loss.name!r}")
        kept = [d.name for d in (self.run_dir / "last", self.run_dir / "best") if d.exists()]
        if not self.resume and kept and not self.overwrite:
            raise FileExistsError(
                f"{self.run_dir} already holds a run ({', '.join(kept)}/); continue it with --resume, start it "
                "afresh with --overwrite (deletes the run's checkpoints, log, config and scores, nothing else), "
                "or choose another name=...")
        if self.overwrite and self.dist.is_main and self.run_dir.is_dir():
            self._delete_run_files()

    def _delete_run_files(self) -> None:
        """--overwrite: :func:`delete_run_files` of this run's folder (the lock stays held)."""
        delete_run_files(self.run_dir, self.run_files, ("last", "best", "config.yaml", "log.csv"), "train",
                         "choose another name=... or out=...")

    def build(self) -> None:
        cfg = self.cfg
        self._check()
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {self.dist.world_size} ranks")
        torch.manual_seed(cfg.seed)
        self.model = build_derainer(cfg.model.name, cfg.model.options, cfg.model.init)
        if cfg.model.name is None:  # config.yaml records the architecture model.init chose
            cfg.model.name = self.model.derain_name
        self.model.to(self.device).train()
        self.build_data()
        self.optimizer = torch.optim.Adam(self.param_groups(), lr=cfg.optim.lr, betas=cfg.optim.betas)
        self.loss_fn = self.make_loss()
        amp_dtype = autocast_dtype(self.device) if cfg.amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        if self.resume:
            self._load_state()
        self.net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=True
            )

    def build_data(self) -> None:
        """Hook: set ``self.train_src`` and ``self.val_src`` (None = no validation); subclasses add task models."""
        cfg = self.cfg
        self.train_src = build_source(cfg.train)
        self.val_src = build_source(cfg.val) if cfg.val is not None else None
        if cfg.val_holdout:
            from derain.data import holdout_split

            if cfg.val is not None:
                raise ValueError("set either val (a validation set) or val_holdout (pairs held out of train), not both")
            self.train_src, self.val_src = holdout_split(self.train_src, cfg.val_holdout, cfg.seed)
        # Test sets are opened now, so a wrong path fails before training rather than after it.
        self.test_srcs = {name: build_source(src) for name, src in getattr(cfg, "test", {}).items() if src is not None}

    def param_groups(self) -> list[dict[str, Any]]:
        """Hook: optimizer parameter groups; a group's ``lr_scale`` multiplies the scheduled lr."""
        return [{"params": list(self.model.parameters())}]

    def make_loss(self) -> nn.Module:
        """Hook: the restoration loss."""
        loss = self.cfg.loss
        return build_loss(loss.name, edge_weight=loss.edge_weight, eps=loss.eps)

    def log_start(self, logger: RunLogger) -> None:
        """Hook: rows for step 0 of a fresh run's ``log.csv`` (e.g. the validation of the starting weights)."""

    def after_backward(self) -> None:
        """Hook: runs between ``backward`` and the optimizer step (e.g. to all-reduce gradients DDP does not own)."""

    def extra_state(self) -> dict[str, Any]:
        """Hook: more entries for ``last/state.pt`` (tensors, numbers, strings, dicts of them)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Hook: restore what :meth:`extra_state` saved."""

    def _load_state(self) -> None:
        last = self.run_dir / "last"
        if recover_dir(last):
            warnings.warn(f"{last} was missing after an interrupted save; resuming from the previous one", stacklevel=2)
        state_file = last / "state.pt"
        if not state_file.is_file():
            raise FileNotFoundError(
                f"--resume: no training state at {state_file}; start without --resume or check out/name"
            )
        load_weights(self.model, last)
        state = safe_torch_load(state_file)  # a tampered state.pt is one line, never run
        saved = read_meta(last).get("step")
        if saved is not None and int(saved) != int(state["step"]):
            raise CheckpointError(
                f"--resume: {last} is inconsistent (weights of step {saved}, optimizer state of step {state['step']}); "
                "it was written by an older version interrupted mid-save. Start a new run from its weights with "
                f"model.init={last}, or resume from an earlier copy")
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_value = state.get("best_value", state.get("best_psnr"))  # "best_psnr": before 0.3
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.load_extra_state(state)

    # Config keys a resumed run may change: how long it runs, how often it logs, validates and saves, where it runs,
    # and what is scored at the end. Every other key changes what is trained.
    RESUMABLE_KEYS = ("iters", "log_every", "val_every", "save_every", "device", "val_limit", "test", "out")

    def _check_resume_config(self) -> None:
        """Refuse --resume with a config that changes what the run trains (seed, data, model, optimizer, loss...),
        naming each key; the run's ``config.yaml`` would otherwise be rewritten with values it was not trained with."""
        saved_file = self.run_dir / "config.yaml"
        if not saved_file.is_file():
            return
        import yaml

        def flat(data: Any, prefix: str = "") -> dict[str, Any]:
            if isinstance(data, dict):
                return {k: v for key, value in data.items() for k, v in flat(value, f"{prefix}{key}.").items()}
            return {prefix[:-1]: data}

        saved = flat(read_yaml(saved_file))
        now = flat(yaml.safe_load(yaml.safe_dump(to_dict(self.cfg))))
        changed = sorted(k for k in saved.keys() | now.keys()
                         if saved.get(k) != now.get(k) and k.split(".")[0] not in self.RESUMABLE_KEYS)
        if changed:
            diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
            raise ConfigError(
                f"--resume: this config changes what {self.run_dir} was trained with ({diffs}"
                f"{' ...' if len(changed) > 6 else ''}); resume with the run's own {saved_file} (only "
                f"{', '.join(self.RESUMABLE_KEYS)} may change), or start a new run (name=...) from its weights with "
                f"model.init={self.run_dir / 'last'}")

    # -- checkpoints --------------------------------------------------------------------------------
    def save(self, which: str) -> Path:
        """Write ``last/`` (weights + training state) or ``best/`` as one unit: a kill or a full disk leaves the
        previous complete folder, never weights and state of different steps. Weights that are no longer finite
        are never saved: the previous checkpoint stays the last good one."""
        folder = self.run_dir / which
        bad = next((n for n, p in unwrap(self.model).named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            raise NonFiniteLossError(
                f"parameter {bad!r} is not finite at step {self.step}: {which}/ was not written, so {folder} keeps "
                "the last good save. Lower optim.lr or set optim.grad_clip, then --resume or start again.")
        extra = {f"best_{self.metric}": self.best_value, "train_config": self.cfg.name}
        with replace_dir(folder) as tmp:
            model = unwrap(self.model)  # the architecture it was built as (model.init may have chosen it)
            save_checkpoint(tmp, model, name=model.derain_name, config=model.derain_config,
                            step=self.step, extra=extra)
            if which == "last":
                state = {
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                    "step": self.step,
                    "best_value": self.best_value,
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                    **self.extra_state(),
                }
                torch.save(state, tmp / "state.pt")
        return folder

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train (or continue) the run; a second process on the same run folder is refused while this one runs."""
        with folder_lock(self.run_dir, f"derainbench train {self.cfg.name}") if self.dist.is_main else (
                contextlib.nullcontext()):
            return self._run()

    def _run(self) -> TrainResult:
        cfg = self.cfg
        self.build()
        main = self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.resume:
                self._check_resume_config()
            save_config(cfg, self.run_dir / "config.yaml")
        logger = RunLogger(self.run_dir, self.step, self.extra_log_fields) if main else None
        if logger and self.step == 0:
            self.log_start(logger)
        bar = tqdm(total=cfg.iters, initial=self.step, disable=not (self.progress and main),
                   desc=f"train {cfg.name}", dynamic_ncols=True)
        t0, last_log_step = time.perf_counter(), self.step
        try:
            with _catch_stop_signals(self):
                while self.step < cfg.iters:
                    lr = lr_at(self.step, cfg.optim)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr * group.get("lr_scale", 1.0)
                    loss = self.train_step(self.sample(self.step))
                    self.step += 1
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == cfg.iters:
                        now = time.perf_counter()
                        rate = (self.step - last_log_step) / max(now - t0, 1e-9)
                        t0, last_log_step = now, self.step
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                        if logger:
                            logger.log(self.step, loss=loss, lr=lr, it_per_s=rate, **self.log_extra)
                    if self.val_src is not None and (self.step % cfg.val_every == 0 or self.step == cfg.iters):
                        self.validate(logger, bar)
                    if main and (self.step % cfg.save_every == 0 or self.step == cfg.iters):
                        self.save("last")
                    if any_rank(self._stop_signal is not None, self.dist, self.device):
                        break
            interrupted = self._stop_signal is not None or self.step < cfg.iters
            if main and interrupted:
                self.save("last")
                bar.write(f"stopped at step {self.step}; saved {self.run_dir / 'last'} (continue with --resume)")
            barrier(self.dist)
        finally:
            bar.close()
            if logger:
                logger.close()
            cleanup_distributed(self.dist)
        if not interrupted and main and getattr(self, "test_srcs", None):
            self._score_tests()
        result = TrainResult(self.run_dir, self.step, interrupted, self.best_value, self._stop_signal, self.metric)
        self.after_training(result)
        return result

    def after_training(self, result: TrainResult) -> None:
        """Hook: runs at the end of :meth:`run`, still holding the run folder's lock (e.g. a summary file)."""

    def is_better(self, value: float) -> bool:
        """Whether a validation ``value`` of :attr:`metric` beats the best so far (:attr:`metric_mode`)."""
        if self.best_value is None:
            return True
        return value > self.best_value if self.metric_mode == "max" else value < self.best_value

    def _score_tests(self) -> dict[str, dict[str, Any]]:
        """Score every test set once with best/ (or the final weights when there was no validation);
        writes ``test.json`` and prints one line per set."""
        which = "best" if self.val_src is not None and is_checkpoint(self.run_dir / "best") else "last"
        model = load_derainer(self.run_dir / which).to(self.device)
        results: dict[str, dict[str, Any]] = {}
        for name, source in self.test_srcs.items():
            scores = evaluate(model, source, self.device, amp=self.cfg.amp)
            results[name] = {**scores, "images": len(source), "checkpoint": which}
            print(f"test {name}: psnr_y {scores['psnr_y']:.3f} dB, ssim_y {scores['ssim_y']:.4f} "
                  f"({len(source)} images, {which}/ weights)")
        atomic_write_text(self.run_dir / "test.json", json.dumps(results, indent=2) + "\n")
        return results

    def sample(self, step: int) -> Any:
        """This rank's batch for ``step`` (a pure function of (seed, step)): ``(rainy, clean)`` on the device."""
        from derain.data import sample_batch

        cfg = self.cfg
        rainy, clean = sample_batch(
            self.train_src, step, cfg.batch_size, cfg.patch_size, cfg.seed,
            rank=self.dist.rank, world_size=self.dist.world_size, augment=cfg.augment,
        )
        return rainy.to(self.device), clean.to(self.device)

    def train_step(self, batch: Any) -> float:
        """One optimizer step on ``batch`` (from :meth:`sample`); returns the rank-mean loss."""
        rainy, clean = batch
        with autocast(self.device, self.cfg.amp):
            pred = self.net(rainy)
        loss = self.loss_fn(pred.float(), clean)
        return self.optimize(loss)

    def optimize(self, loss: torch.Tensor) -> float:
        """Check ``loss`` is finite on every rank, back-propagate it and step (AMP scaler, optional clipping)."""
        mean_loss = all_reduce_mean(loss.detach(), self.dist)
        if not torch.isfinite(mean_loss):
            last = self.run_dir / "last"
            if (last / "state.pt").is_file():
                step = read_meta(last).get("step")
                kept = (f"{last} holds step {step}, saved while the loss was still finite (with a diverging lr its "
                        "weights may already be poor: compare best/ or the log). Lower optim.lr, set optim.grad_clip, "
                        "or check the training images, then continue with --resume, or start again")
            else:
                kept = (f"no checkpoint was saved yet (save_every={self.cfg.save_every}), so there is nothing to "
                        "resume: lower optim.lr, set optim.grad_clip, or check the training images, and start again")
            raise NonFiniteLossError(
                f"non-finite loss ({mean_loss.item()}) at step {self.step + 1}; weights were not updated. {kept}."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.after_backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(mean_loss)

    def validate(self, logger: RunLogger | None, bar: tqdm) -> None:
        if self.dist.is_main:
            scores = evaluate(self.model, self.val_src, self.device, limit=self.cfg.val_limit, amp=self.cfg.amp)
            psnr_y = scores["psnr_y"]
            bar.write(f"step {self.step}: val psnr_y {psnr_y:.3f} dB, ssim_y {scores['ssim_y']:.4f}")
            if logger:
                logger.log(self.step, val_psnr_y=psnr_y, val_ssim_y=scores["ssim_y"])
            if self.is_better(psnr_y):
                self.best_value = psnr_y
                self.save("best")
        barrier(self.dist)


def evaluate(model: nn.Module, source: Any, device: torch.device, limit: int | None = None,
             amp: bool = False) -> dict[str, float]:
    """Mean Y-channel PSNR/SSIM (MATLAB protocol, no crop) of ``model`` over whole images of ``source``."""
    from derain.metrics import psnr, ssim

    n = len(source) if limit is None else min(limit, len(source))
    totals = {"psnr_y": 0.0, "ssim_y": 0.0}
    model, layout = validation_copy(unwrap(model), device)
    with eval_mode(model), torch.inference_mode():
        for i in range(n):
            rainy, clean = source.get_pair(i)
            x = to_tensor(rainy).unsqueeze(0).to(device).contiguous(memory_format=layout)
            y = to_tensor(clean).unsqueeze(0).to(device)
            with autocast(device, amp):
                pred = model(x)
            pred = pred.float().clamp(0, 1)
            totals["psnr_y"] += float(psnr(pred, y).mean())
            totals["ssim_y"] += float(ssim(pred, y).mean())
    return {k: v / max(n, 1) for k, v in totals.items()}


class RunLogger:
    """``log.csv`` (one row per logged step) plus TensorBoard events when tensorboard is installed."""

    FIELDS = ("step", "time", "loss", "lr", "it_per_s", "val_psnr_y", "val_ssim_y")

    def __init__(self, run_dir: Path, resume_step: int, extra_fields: tuple[str, ...] = ()) -> None:
        self.fields = (*self.FIELDS, *extra_fields)
        self.path = run_dir / "log.csv"
        rows = []
        if self.path.is_file() and resume_step > 0:  # keep history up to the resumed step only
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        # The kept history is written to a temp file and renamed into place, then appended to: a kill at any
        # moment leaves either the old log or the new one, never an empty file.
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            head = csv.DictWriter(fh, fieldnames=self.fields, restval="", extrasaction="ignore")
            head.writeheader()
            head.writerows(rows)
        self.fh = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
        self.writer = csv.DictWriter(self.fh, fieldnames=self.fields, restval="")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb: Any = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step or None)
        except ImportError:
            self.tb = None

    def log(self, step: int, **values: float) -> None:
        row = {"step": step, "time": f"{time.time():.3f}",
               **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()}}
        self.writer.writerow(row)
        self.fh.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


@contextmanager
def _catch_stop_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM set a flag; the loop saves and exits at the next step boundary."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        trainer._stop_signal = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def delete_run_files(run_dir: Path, run_files: tuple[str, ...], markers: tuple[str, ...], command: str,
                     alternative: str) -> None:
    """--overwrite: delete what a run writes in ``run_dir`` (``run_files``, and the temporary or previous copies a
    crash leaves beside them), keep everything else, and say what went; a folder holding none of ``markers`` (no run)
    but other files is refused untouched, naming ``alternative`` (what to do instead). ``.lock`` is never touched."""
    entries = sorted(p.name for p in run_dir.iterdir() if p.name != ".lock")
    if entries and not any(name in entries for name in markers):
        raise FileExistsError(
            f"{run_dir} is not a run folder (no {', '.join(m + '/' if '.' not in m else m for m in markers)}) but "
            f"holds {', '.join(entries[:5])}{' ...' if len(entries) > 5 else ''}: --overwrite deletes only a run's "
            f"own files; {alternative}")

    def written(name: str) -> bool:  # a run file, or `.<stem>.tmp<pid><suffix>` / `.<name>.old` beside one
        return name in run_files or any(name == f".{f}.old" or name.startswith(f".{Path(f).stem}.tmp")
                                        for f in run_files)

    old = [name for name in entries if written(name)]
    for name in old:
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    kept = [name for name in entries if name not in old]
    if old:
        print(f"{command}: --overwrite: deleted {', '.join(old)} from {run_dir}"
              + (f" (kept {', '.join(kept)}: not written by a run)" if kept else ""))


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Train a derainer as configured; see :class:`Trainer`."""
    return Trainer(cfg, resume=resume, progress=progress, overwrite=overwrite).run()
