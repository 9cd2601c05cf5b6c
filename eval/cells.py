"""Running one cell: loading the task model and derainers (and recording them), preparing the cell's images in
DataLoader workers (rain synthesized or read, derained images from the cache), scoring them (:func:`run_cell`)
and the run's environment and runtime settings."""

from __future__ import annotations

import glob
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from derain.checkpoint import WEIGHTS_FILE, file_sha256, is_checkpoint, load_derainer
from derain.fileio import atomic_write_text, to_jsonable
from derain.imageio import quantize_uint8, read_image, to_tensor, write_image
from derain.inference import derain_tensor
from derain.metrics import compute_metrics
from derain.runtime import DistInfo, InferencePolicy, inference_policy
from derain.synth import image_seed, synthesize
from downstream.tasks import get_task
from eval.bench_config import BenchConfig, Cell, DatasetSpec, DerainerSpec, PlannedCell
from eval.fingerprints import derainer_digest


def environment(device: torch.device, dist: DistInfo) -> dict[str, Any]:
    """The device and package versions a run used, so a report can state what produced its numbers."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("derainbench", "torch", "torchvision", "ultralytics", "segmentation-models-pytorch", "pycocotools",
                 "numpy", "spandrel", "spandrel-extra-arches"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": str(device), "device_name": name, "processes": dist.world_size,
            "python": platform.python_version(), "platform": platform.platform(), "packages": packages}


def _load_task_model(spec: DatasetSpec, path: str, dataset: Any, device: torch.device,
                     channels_last: bool = False) -> Any:
    """The dataset's task model ``path`` made ready for scoring (YOLO: Conv+BN fused), its weights in NHWC when
    ``channels_last`` (the convs then run NHWC on NCHW inputs; measured 1.8x (YOLO11n) and 3x (U-Net) faster at
    160 px on 2 CPU cores)."""
    task = get_task(spec.task)
    try:
        model = task.load_model(path, dataset.names, device=device)
    except ValueError as exc:
        raise ValueError(f"dataset {spec.name!r}: {exc}") from exc
    return task.for_inference(model, channels_last)


def _load_derainer(spec: DerainerSpec, device: torch.device) -> torch.nn.Module:
    return load_derainer(spec.model, spec.weights, **spec.options).to(device)


DERAINERS_FILE = "derainers.json"


def describe_derainer(spec: DerainerSpec, model: torch.nn.Module, hashes: dict[str, str]) -> dict[str, Any]:
    """What a report says of a derainer: its architecture, parameter count, the sha256 of its weights (file or
    checkpoint folder), and for zoo architectures the paper and the licence of the original code."""
    name = getattr(model, "derain_name", type(model).__name__)
    zoo_arch = getattr(model, "zoo_arch", None)
    info: dict[str, Any] = {
        "architecture": f"{zoo_arch} (zoo)" if zoo_arch else name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_sha256": _weights_sha256(Path(spec.weights or spec.model), hashes),
    }
    facts = getattr(model, "zoo_facts", None)
    if facts is not None:
        info.update(paper=facts.paper, year=facts.year, licence=facts.licence, non_commercial=facts.non_commercial)
    return info


def _weights_sha256(path: Path, hashes: dict[str, str]) -> str | None:
    """sha256 of a weights file (what ``sha256sum`` prints), or of a checkpoint folder's ``model.safetensors``; None
    for registered names without weights."""
    if path.is_dir() and is_checkpoint(path):
        path = path / WEIGHTS_FILE
    if not path.is_file():
        return None
    key = f"sha256:{path.resolve()}"
    if key not in hashes:
        hashes[key] = file_sha256(path)
    return hashes[key]


def record_derainer(out: Path, spec: DerainerSpec, model: torch.nn.Module, hashes: dict[str, str]) -> None:
    """Add ``spec``'s :func:`describe_derainer` to ``<out>/derainers.json`` (by derainer name)."""
    path = out / DERAINERS_FILE
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        known = {}  # a damaged record is rewritten from the derainers loaded now
    known[spec.name] = describe_derainer(spec, model, hashes)
    atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True))


def rainy_image(clean: np.ndarray, severity: str, seed: int, name: str) -> np.ndarray:
    """The rainy version of ``clean`` that ``derainbench synth --seed seed`` writes for the image at relative path
    ``name`` (8-bit): bench passes the path relative to the dataset's image folder (:func:`seed_name`)."""
    rainy, _ = synthesize(clean, severity, seed=image_seed(seed, name))
    return quantize_uint8(rainy).astype(np.float32) / 255.0


def seed_name(dataset: Any, i: int) -> str:
    """What image ``i``'s synthetic rain is seeded by: its path relative to the dataset's image folder (posix), as
    ``derainbench synth IMAGE_FOLDER`` seeds it (the file name in flat layouts; ``{city}/x.png`` in nested ones)."""
    path = Path(dataset.image_path(i))
    root = getattr(dataset, "images_dir", None)
    return path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else path.name


class CellItem(NamedTuple):
    """One image of a cell, as the DataLoader hands it over."""

    index: int
    name: str  # file name (sample files and per-image rows use it; rain is seeded by seed_name)
    image: np.ndarray  # the clean (or real-rain) image, H×W×3 float32 in [0, 1]
    label: Any
    x: torch.Tensor | None  # the task model's (or derainer's) input, 3×H×W; None when ``derained`` was cached
    key: str | None  # the input's cache key (None: caching off)
    derained: torch.Tensor | None  # the cached derainer output, 3×H×W on the 8-bit grid


class CellInputs(torch.utils.data.Dataset):
    """The images one cell scores, prepared in DataLoader workers while the models run.

    The input is the clean image (severity none, or a real-rain dataset's own image), the file of a rain source
    (``rainy_files``), or rain synthesized with the preset and ``seed`` and quantized to 8 bits. With a cache
    (``cache_root``), synthesized rain is read from it when another cell made it, and for a derainer cell
    (``derainer``: its digest) so is the derained image, in which case the rain is not even made."""

    def __init__(self, dataset: Any, indices: Sequence[int], severity: str, seed: int, clean: bool,
                 rainy_files: list[Path] | None, cache_root: Path | None, derainer: str | None) -> None:
        self.dataset, self.indices, self.severity, self.seed = dataset, list(indices), severity, seed
        self.clean, self.rainy_files, self.cache_root, self.derainer = clean, rainy_files, cache_root, derainer

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> CellItem:
        from eval.image_cache import ImageCache, input_digest, rain_key

        i = self.indices[k]
        image, label = self.dataset[i]
        name = Path(self.dataset.image_path(i)).name
        caching = self.cache_root is not None
        x: torch.Tensor | None = None
        if self.clean:
            x = to_tensor(image)
        elif self.rainy_files is not None:
            x = _read_source_image(self.rainy_files[i], self.dataset.image_path(i), image.shape)[0]
        seeded_by = seed_name(self.dataset, i)
        key = None if not caching else input_digest(x) if x is not None else rain_key(
            image, self.severity, self.seed, seeded_by)
        derained = None
        if key is not None and self.derainer is not None:
            derained = ImageCache(self.cache_root, f"derained/{self.derainer}").get(key)
        if x is None and derained is None:
            rain = ImageCache(self.cache_root, "rainy")
            x = rain.get(key) if key is not None else None
            if x is None:
                x = to_tensor(rainy_image(image, self.severity, self.seed, seeded_by))
                if key is not None:
                    rain.put(key, x)
        return CellItem(i, name, image, label, x, key, derained)


def _as_is(item: Any) -> Any:
    """DataLoader collate for single items: keep numpy labels as they are (no tensor conversion)."""
    return item


@dataclass
class Runtime:
    """How cells run (not what they compute): device, task-model batch, the derainers' inference policy (layout,
    batch), loader workers, cache, the output folder and process group, and the models loaded so far."""

    device: torch.device
    batch: int
    policy: InferencePolicy
    workers: int
    cache_root: Path | None
    compile: bool | None = None  # derain_compile as configured (None: each derainer's policy default)
    amp: bool = False  # derain_amp as configured
    hashes: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # restoration scores shared by tasks
    out: Path = Path(".")  # the run folder (predictions/, samples/, derainers.json)
    dist: DistInfo = field(default_factory=DistInfo)
    samples: int = 0  # images saved per condition (for reports)
    progress: bool = False  # progress bars (rank 0)
    derainers: dict[str, torch.nn.Module] = field(default_factory=dict)  # loaded once, shared by every dataset
    _task_model: tuple[tuple[str, str], Any] | None = None  # ((dataset, name), model): the last task model loaded

    def derainer_policy(self, derainer: torch.nn.Module) -> InferencePolicy:
        """The inference policy for ``derainer`` on this device, with the run's configured overrides."""
        return inference_policy(self.device, model=derainer, channels_last=self.policy.channels_last,
                                batch_size=self.policy.batch_size, compile=self.compile, amp=self.amp)

    def task_model(self, cell: PlannedCell) -> Any:
        """The task model that scores ``cell``, loaded when its first cell runs (one at a time: cells come
        grouped by dataset and task model)."""
        key = (cell.cell.dataset, cell.task_model.name)
        if self._task_model is None or self._task_model[0] != key:
            assert cell.data is not None, "run_cell needs a cell planned against its opened dataset"
            self._task_model = None  # the previous model is freed before the next one loads
            model = _load_task_model(cell.dataset, cell.task_model.model, cell.data.dataset, self.device,
                                     self.policy.channels_last)
            self._task_model = (key, model)
        return self._task_model[1]

    def derainer(self, cell: PlannedCell) -> torch.nn.Module | None:
        """``cell``'s derainer (None for clean and rainy cells), loaded once per run and recorded in
        ``derainers.json`` (rank 0)."""
        spec = cell.derainer
        if spec is None:
            return None
        if spec.name not in self.derainers:
            self.derainers[spec.name] = _load_derainer(spec, self.device)
            if self.dist.is_main:
                record_derainer(self.out, spec, self.derainers[spec.name], self.hashes)
        return self.derainers[spec.name]

    @classmethod
    def of(cls, cfg: BenchConfig, device: torch.device, out: Path, dist: DistInfo | None = None,
           progress: bool = False) -> Runtime:
        policy = inference_policy(device, channels_last=cfg.channels_last, batch_size=cfg.derain_batch)
        return cls(device=device, batch=cfg.batch or 8, policy=policy, compile=cfg.derain_compile, amp=cfg.derain_amp,
                   workers=default_workers() if cfg.workers is None else cfg.workers,
                   cache_root=out / "cache" if cfg.cache else None, out=out, dist=dist or DistInfo(),
                   samples=cfg.samples, progress=progress and (dist or DistInfo()).is_main)


def default_workers() -> int:
    """DataLoader workers for image reading and rain synthesis: half the CPU cores, at most 4; none on a machine of
    two cores or fewer, where a worker only takes a core from the models (measured: 34 s vs 28 s for the demo
    bench on 2 cores)."""
    import os

    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)


def _batches(loader: Any, size: int) -> Any:
    """Consecutive items of equal image size, ``size`` at a time (a size change flushes the batch)."""
    batch: list[CellItem] = []
    for item in loader:
        if batch and (len(batch) == size or batch[0].image.shape != item.image.shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _derain_batch(derainer: torch.nn.Module, dspec: DerainerSpec, batch: list[CellItem], cache: Any,
                  rt: Runtime) -> list[torch.Tensor]:
    """Derained, 8-bit-quantized versions of the batch's inputs: cached ones as read, the rest computed in one
    call and stored."""
    from eval.image_cache import quantize

    out = [b.derained for b in batch]
    todo = [j for j, y in enumerate(out) if y is None]
    if todo:
        size = batch[0].image.shape[:2] if dspec.tile is None else (dspec.tile, dspec.tile)  # images or tiles per call
        policy = rt.derainer_policy(derainer)
        y = derain_tensor(derainer, torch.stack([batch[j].x for j in todo]), tile=dspec.tile, overlap=dspec.overlap,
                          stat_passes=dspec.stat_passes, batch_size=policy.batch(*size),
                          channels_last=policy.channels_last, compile=policy.compile, amp=policy.amp)
        for j, img in zip(todo, quantize(y.cpu()), strict=True):
            out[j] = img
            if batch[j].key is not None:
                cache.put(batch[j].key, img)
    return out


def _restoration_scores(y: torch.Tensor, clean: np.ndarray, key: str | None, rt: Runtime) -> dict[str, float]:
    """PSNR-Y / SSIM-Y of ``y`` (3×H×W) against ``clean`` (H×W×3), computed once per run for the same image and
    condition (``key``: the input's cache key and the derainer's digest), so a second task reuses them."""
    from eval.image_cache import input_digest

    full = None if key is None else f"{key}:{input_digest(clean)}"
    if full is None or full not in rt.scores:
        scores = compute_metrics(y[None], to_tensor(clean)[None])
        value = {"psnr_y": float(scores["psnr_y"]), "ssim_y": float(scores["ssim_y"])}
        if full is None:
            return value
        rt.scores[full] = value
    return dict(rt.scores[full])


def run_cell(cell: PlannedCell, rt: Runtime) -> dict[str, Any]:
    """Score one planned cell on this rank's share of the images; rank 0 gets the totals (the cell file's content,
    without its fingerprint and inputs).

    Images are read (and rain synthesized) by DataLoader workers while the models run; derainer outputs come from
    the run's derain cache when another cell (another task, another dataset with the same pixels) already made
    them, and are scored as 8-bit images either way."""
    from eval.image_cache import ImageCache

    assert cell.data is not None, "run_cell needs a cell planned against its opened dataset"
    t0 = time.perf_counter()
    spec, key, dist, data, scoring = cell.dataset, cell.cell, rt.dist, cell.data, cell.scoring
    task = get_task(spec.task)
    task_model, derainer, dspec = rt.task_model(cell), rt.derainer(cell), cell.derainer
    clean_input = cell.clean_input
    digest = derainer_digest(dspec, rt.hashes, rt.amp) if dspec is not None else None
    cache = ImageCache(rt.cache_root if digest else None, f"derained/{digest}")
    rainy_files = data.sources.get(key.severity)
    inputs = CellInputs(data.dataset, range(dist.rank, data.n, dist.world_size), key.severity, cell.seed,
                        clean_input, rainy_files, rt.cache_root, digest)
    loader = torch.utils.data.DataLoader(inputs, batch_size=None, collate_fn=_as_is, num_workers=rt.workers,
                                         prefetch_factor=4 if rt.workers else None)
    items: list[tuple[int, dict[str, Any], Any, Any]] = []  # (index, per-image row, prediction, label)
    bar = tqdm(total=len(inputs), desc=f"{key.dataset} {key.severity} {key.method}", disable=not rt.progress,
               leave=False)
    hits = 0
    imgsz, imgsz_from = (spec.imgsz, "config") if spec.imgsz else task.input_size(task_model)
    for batch in _batches(loader, rt.batch):
        if derainer is not None:
            hits += sum(b.derained is not None for b in batch)
            xs = _derain_batch(derainer, dspec, batch, cache, rt)
        else:
            xs = [b.x for b in batch]
        x = torch.stack(xs).to(rt.device)
        preds = task.predict(task_model, x, imgsz=imgsz, conf=scoring.conf, iou=scoring.iou)
        for (i, name, image, label, _, ckey, _), y, pred in zip(batch, xs, preds, strict=True):
            row: dict[str, Any] = {"image": name}
            if rainy_files is not None:  # which of a source's files (RainCityscapes: which pattern) was scored
                row["rain_file"] = rainy_files[i].name
            if not clean_input:  # no clean twin for real rain; the clean cell scores itself
                row.update(_restoration_scores(y, image, None if ckey is None else f"{digest}:{ckey}", rt))
            items.append((i, row, pred, label))
            if i < rt.samples and key.rep == 0 and not key.task_model:  # samples show the first task model's view
                _save_sample(rt.out, key, task, name, y, pred, label)
        bar.update(len(batch))
    bar.close()
    items = _gather(items, dist)
    all_hits = _gather([hits], dist)
    if not dist.is_main:
        return {}
    items.sort(key=lambda item: item[0])
    evaluator, image_ids = task.dataset_evaluator(data.dataset, range(data.n))  # the dataset's own truth and ids
    for i, _, pred, label in items:
        evaluator.update([pred], [label], [image_ids[i]])
    metrics = evaluator.compute(image_stats=scoring.bootstrap > 0)
    image_stats = metrics.pop("image_stats", None)  # what the bootstrap resamples (see eval.bootstrap)
    if hasattr(evaluator, "results"):  # COCO-protocol tasks: predictions and the ground truth scored, COCO JSON
        atomic_write_text(rt.out / "predictions" / f"{key.key}.json", json.dumps(evaluator.results()))
        atomic_write_text(rt.out / "predictions" / f"{key.dataset}.gt.json", json.dumps(evaluator.gt_dict()))
    per_image = [row for _, row, _, _ in items]
    restoration = {k: float(np.mean([r[k] for r in per_image])) for k in ("psnr_y", "ssim_y") if k in per_image[0]}
    result = {"cell": key.__dict__, "task": spec.task, "task_model": cell.task_model.name, "n": data.n,
              "metrics": to_jsonable(metrics), "restoration": restoration, "per_image": per_image,
              "seconds": time.perf_counter() - t0}
    if imgsz_from:  # the detector's input size: the config's, the checkpoint's, or each image's long side (None)
        result["imgsz"], result["imgsz_from"] = imgsz, imgsz_from
    if derainer is not None:
        result["derain_cache_hits"] = int(sum(all_hits))
    if scoring.bootstrap > 0:
        result["image_stats"] = image_stats
    return result


def _read_source_image(path: Path, clean_path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """A rain source's image as ``1×3×H×W``; its size must be the labelled image's."""
    rainy = read_image(path)
    if rainy.shape != tuple(shape):
        raise ValueError(f"rainy image {path} is {rainy.shape[1]}×{rainy.shape[0]} but its labelled image {clean_path} "
                         f"is {shape[1]}×{shape[0]} (W×H): rain sources must keep the image size")
    return to_tensor(rainy)[None]


def _gather(items: list, dist: DistInfo) -> list:
    """All ranks' items on rank 0 (the input itself when not distributed)."""
    if not dist.enabled:
        return items
    import torch.distributed as tdist

    parts: list[Any] = [None] * dist.world_size if dist.is_main else []
    tdist.gather_object(items, parts if dist.is_main else None, dst=0)
    return [item for part in parts for item in part] if dist.is_main else []


def _save_sample(out: Path, cell: Cell, task: Any, name: str, image: torch.Tensor, pred: Any, label: Any) -> None:
    """For reports: the image the task model saw (PNG) and its prediction under ``samples/<dataset>/<severity>/
    <method>/``, and once per image its ground truth under ``samples/<dataset>/truth/`` (as the task saves them)."""
    folder = out / "samples" / cell.dataset / cell.severity / cell.method
    stem = Path(name).stem
    write_image(folder / f"{stem}.png", image)
    task.save_label(folder, stem, pred)
    truth = out / "samples" / cell.dataset / "truth"
    if not any(truth.glob(f"{glob.escape(stem)}.*")):  # a task's files start with the stem (Task.save_label)
        task.save_label(truth, stem, label)
