"""The main job, offline: the whole study on generated scenes — rain, derain, detect, segment, report.

Stages (each skipped when ``OUT/.stages/<name>.json`` says it finished, unless ``force``):

    scenes    labelled scenes from the built-in generator    OUT/data/scenes/{det,seg}
    rain      their val split rained at each severity        OUT/data/rainy/<severity>/  (+ .rain.json)
    models    detector, segmenter (clean-trained), their       shipped weights (derainbench/assets/demo) or
              rain-trained twins, mspfn-lite, prenet          trained into OUT/models/ (``retrain``)
    joint     mspfn-lite fine-tuned with the detection loss   OUT/joint/mspfn-lite+det/, and its control with
              the restoration loss only (same steps)      OUT/joint/mspfn-lite+restore/ (on a CPU: both at
                                                              once, each on half the cores)
    bench     clean | rainy | identity | prenet | mspfn-lite | mspfn-lite+det | mspfn-lite+restore, both tasks,
              each scored by the clean- and the rain-trained task model: the three strategies against rain
                                                              OUT/bench/ (results.csv, per-cell resume)
    report    tables, figures, image grids                    OUT/report/report.{md,html}

The recipe is :class:`DemoConfig` (``key=value`` overrides). Shipped weights are used only when the recipe's
model-defining fields equal the ones recorded in the assets' ``MANIFEST.json``; otherwise (or with
``retrain``) the models are trained here. ``fast`` shrinks everything to seconds (CI smoke test).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parent / "assets" / "demo"
MANIFEST = "MANIFEST.json"
RETRAIN_COMMAND = "derainbench demo --retrain --out runs/demo-retrain"
TINY_MSPFN = {"channels": 8, "cfm_channels": 4, "lstm_channels": [4, 8, 8], "units": 1}


@dataclass
class DetectorRecipe:
    """YOLO detector trained by ultralytics on the clean training scenes."""

    model: str = "yolo11n.yaml"
    epochs: int = 60
    batch: int = 16


@dataclass
class SegmenterRecipe:
    """smp U-Net trained with cross-entropy on random crops of the clean training scenes."""

    encoder: str = "timm-mobilenetv3_small_100"
    decoder_channels: list[int] = field(default_factory=lambda: [64, 32, 16, 16, 8])
    iters: int = 1500
    batch: int = 8
    crop: int = 96
    lr: float = 2e-3


@dataclass
class DerainerRecipe:
    """A derainer trained on the training scenes rained on the fly at every severity."""

    model: str = "mspfn-lite"
    options: dict[str, Any] = field(default_factory=dict)
    iters: int = 1500
    batch: int = 8
    patch: int = 64
    lr: float = 1e-3


@dataclass
class PrenetRecipe(DerainerRecipe):
    """PReNet: ~3× slower per step than mspfn-lite on CPU, so fewer steps."""

    model: str = "prenet"
    iters: int = 400


@dataclass
class TaskRainRecipe:
    """Rain augmentation of the rain-trained detector and segmenter (the third strategy): each training image is
    rained with probability ``p`` at one of the demo's severities, new rain each epoch; otherwise their recipes
    are the clean-trained models' (same data, steps and seed)."""

    p: float = 0.5


@dataclass
class JointRecipe:
    """The short task-driven fine-tune of ``mspfn-lite`` with the detector's loss."""

    iters: int = 60
    batch: int = 4
    crop: int = 96
    det_weight: float = 0.1
    lr: float = 2e-4
    # Each run's own validation (before and after, every severity): a progress readout only, since the bench scores
    # the tuned derainers on all held-out scenes, severities and rain seeds right after.
    val_images: int = 8
    # On the CPU the tuned run and its control train side by side, each on half the cores: small-batch training
    # gains little from a second thread (2 cores: 0.51 s per step on two threads, 0.80 s on one), so two runs on one
    # thread each finish sooner than one after the other. Each run's numbers then depend on that thread count.
    side_by_side: bool = True


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    seed: int = 0
    device: str = "auto"
    scenes: int = 200
    size: int = 160
    val_fraction: float = 0.25
    severities: list[str] = field(default_factory=lambda: ["light", "heavy"])
    rain_seeds: int = 2  # the bench scores synthetic rain with seeds seed, seed+1: means ± std over them
    # torch.compile for the bench's derainers (null: the inference policy's default, on for paper-size MSPFN on CPU).
    # Off here (also what the default gives for mspfn-lite and PReNet): at 160 px mspfn-lite is only 1.07x faster
    # compiled, while each new graph takes ~28 s to compile on 2 cores.
    derain_compile: bool | None = False
    detector: DetectorRecipe = field(default_factory=DetectorRecipe)
    segmenter: SegmenterRecipe = field(default_factory=SegmenterRecipe)
    mspfn: DerainerRecipe = field(default_factory=DerainerRecipe)
    prenet: PrenetRecipe = field(default_factory=PrenetRecipe)
    task_rain: TaskRainRecipe = field(default_factory=TaskRainRecipe)
    joint: JointRecipe = field(default_factory=JointRecipe)
    report_formats: str = "md,html,tex,csv"


# --fast: tiny scenes, widths and step counts, so the whole pipeline runs in seconds.
FAST_OVERRIDES = [
    "scenes=8", "size=64", "detector.epochs=1", "detector.batch=4", "segmenter.iters=4", "segmenter.batch=2",
    "segmenter.crop=48", "mspfn.iters=3", "mspfn.batch=2", "mspfn.patch=32", f"mspfn.options={TINY_MSPFN}",
    "prenet.iters=2", "prenet.batch=2", "prenet.patch=32", "prenet.options={stages: 2}", "joint.iters=2",
    "joint.batch=2", "joint.crop=48",
]


@dataclass
class DemoResult:
    out: Path
    report: Path  # report.html (report.md when html is not among the formats)
    table: str
    seconds: float


def demo_config(config: str | Path | None = None, overrides: list[str] | None = None, fast: bool = False,
                out: str | None = None) -> DemoConfig:
    """The demo recipe: defaults, then ``config``'s YAML, the ``--fast`` shrink, ``overrides`` and ``out``."""
    from derain.config import load_config

    extra = [*(FAST_OVERRIDES if fast else []), *(overrides or []), *([f"out={out}"] if out else [])]
    return load_config(DemoConfig, config, extra)


def model_recipe(cfg: DemoConfig) -> dict[str, Any]:
    """The fields that define the four trained models (what shipped weights must have been trained with)."""
    d = asdict(cfg)
    return {k: d[k] for k in ("seed", "scenes", "size", "val_fraction", "severities", "detector", "segmenter",
                              "mspfn", "prenet", "task_rain")}


def run_demo(cfg: DemoConfig, retrain: bool = False, force: bool = False, progress: bool = True,
             log: Callable[[str], None] = print) -> DemoResult:
    """Run every stage (skipping finished ones unless ``force``); returns the report path and the main table."""
    from derain.config import save_config

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo.yaml")
    t0 = time.perf_counter()
    stage = _Stages(out, force, log)
    scenes = stage("scenes", lambda: _scenes(cfg, progress))
    stage("rain", lambda: _rain(cfg, scenes), valid=lambda result: rain_is_current(cfg, result))
    models = stage("models", lambda: _models(cfg, scenes, retrain, force, progress, log),
                   valid=lambda result: isinstance(result, dict) and set(MODELS) <= set(result))
    tuned = stage("joint", lambda: _joint_runs(cfg, scenes, models, force, progress, log), valid=_is_joint_result)
    models.update(tuned)
    bench_dir = stage("bench", lambda: _bench(cfg, scenes, models, force, progress))
    report = stage("report", lambda: _report(cfg, bench_dir))
    from reports.tables import main_table_text

    table = main_table_text([bench_dir])
    return DemoResult(out, Path(report), table, time.perf_counter() - t0)


class _Stages:
    """Runs named stages once: ``OUT/.stages/<name>.json`` holds a finished stage's result and time. Once a stage
    runs, every later one runs too (its inputs may have changed); their own resume logic skips what still holds."""

    def __init__(self, out: Path, force: bool, log: Callable[[str], None]) -> None:
        self.out, self.force, self.log = out, force, log
        self.ran = False

    def __call__(self, name: str, fn: Callable[[], Any], valid: Callable[[Any], bool] | None = None) -> Any:
        """Run ``fn`` unless a marker holds its result (and ``valid`` accepts it: markers of older versions)."""
        from derain.fileio import atomic_write_text

        marker = self.out / ".stages" / f"{name}.json"
        if marker.is_file() and not self.force:
            result = json.loads(marker.read_text())["result"]
            if self.ran:
                self.log(f"[demo] {name}: an earlier stage was redone, so this one is too")
            elif valid is None or valid(result):
                self.log(f"[demo] {name}: done earlier, reused (--force redoes it)")
                return result
            else:
                self.log(f"[demo] {name}: marker from an older demo version, redoing it")
        self.ran = True
        self.log(f"[demo] {name} ...")
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        atomic_write_text(marker, json.dumps({"result": result, "seconds": round(seconds, 2)}, indent=1))
        self.log(f"[demo] {name}: {seconds:.1f} s")
        return result


# -- stages ---------------------------------------------------------------------------------------
def _scenes(cfg: DemoConfig, progress: bool) -> dict[str, str]:
    from downstream.scenes import generate_scenes

    root = Path(cfg.out) / "data" / "scenes"
    generate_scenes(root, n=cfg.scenes, size=cfg.size, seed=cfg.seed, val_fraction=cfg.val_fraction,
                    progress=progress, overwrite=True)
    return {"root": str(root), "det_yaml": str(root / "det" / "data.yaml"), "seg": str(root / "seg")}


def _rain(cfg: DemoConfig, scenes: dict[str, str]) -> dict[str, str]:
    """Rainy copies of the val scenes, the exact images the benchmark scores (same seed and names)."""
    from derain.synth import synthesize_folder

    rainy = Path(cfg.out) / "data" / "rainy"
    for sev in cfg.severities:
        synthesize_folder(Path(scenes["seg"]) / "val" / "images", rainy / sev, preset=sev, seed=cfg.seed,
                          progress=False)
    return {"folders": {sev: str(rainy / sev) for sev in cfg.severities}, "presets": _rain_presets(cfg)}


def rain_is_current(cfg: DemoConfig, result: Any) -> bool:
    """Whether a finished rain stage's ``result`` was made with the preset versions the severities name now."""
    return isinstance(result, dict) and result.get("presets") == _rain_presets(cfg)


def _rain_presets(cfg: DemoConfig) -> dict[str, str]:
    """The versioned preset each severity names now (``heavy`` -> ``heavy@v2``): rain of an older version is redone."""
    from derain.synth import resolve_preset

    return {sev: resolve_preset(sev) for sev in cfg.severities}


MODELS = ("detector", "segmenter", "detector-rain", "segmenter-rain", "mspfn-lite", "prenet")


def _models(cfg: DemoConfig, scenes: dict[str, str], retrain: bool, force: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, str]:
    """Paths of the detector ``.pt``, segmenter folder and derainer checkpoint folders (shipped or trained)."""
    if not retrain:
        shipped = shipped_models(cfg)
        if shipped is not None:
            log(f"[demo] models: shipped weights from {ASSETS} (recipe matches {MANIFEST}; --retrain trains them)")
            return shipped
        log("[demo] models: no shipped weights for this recipe; training them here")
    root = Path(cfg.out) / "models"
    stage = _Stages(root, force, log)  # sub-stages, so an interrupted training keeps the finished models
    models = {
        "detector": stage("detector", lambda: _train_detector(cfg, scenes, root)),
        "segmenter": stage("segmenter", lambda: _train_segmenter(cfg, scenes, root, progress)),
        "detector-rain": stage("detector-rain", lambda: _train_detector(cfg, scenes, root, rain=True)),
        "segmenter-rain": stage("segmenter-rain", lambda: _train_segmenter(cfg, scenes, root, progress, rain=True)),
        "mspfn-lite": stage("mspfn-lite", lambda: _train_derainer(cfg, cfg.mspfn, "mspfn-lite", scenes, root,
                                                                  force, progress)),
        "prenet": stage("prenet", lambda: _train_derainer(cfg, cfg.prenet, "prenet", scenes, root, force,
                                                              progress)),
    }
    write_manifest(root, cfg, models)
    return models


def _task_rain(cfg: DemoConfig, rain: bool) -> Any:
    """The rain augmentation of a rain-trained task model (None for a clean-trained one)."""
    from downstream.rain_augment import RainAugment

    return RainAugment(presets=list(cfg.severities), p=cfg.task_rain.p, seed=cfg.seed) if rain else None


def _train_detector(cfg: DemoConfig, scenes: dict[str, str], root: Path, rain: bool = False) -> str:
    from derain.runtime import resolve_device
    from downstream.detection import train_detector

    r = cfg.detector
    name = "detector-rain" if rain else "detector"
    best = train_detector(scenes["det_yaml"], model=r.model, epochs=r.epochs, imgsz=cfg.size, batch=r.batch,
                          out_dir=(root / f"{name}-run").resolve(), device=str(resolve_device(cfg.device)),
                          seed=cfg.seed, warmup_epochs=0, mosaic=0.0, rain=_task_rain(cfg, rain))
    shutil.copyfile(best, root / f"{name}.pt")
    return str(root / f"{name}.pt")


def _train_segmenter(cfg: DemoConfig, scenes: dict[str, str], root: Path, progress: bool, rain: bool = False) -> str:
    from downstream.segmentation import SegmenterConfig, train_segmenter
    from downstream.tasks import load_task_dataset

    r = cfg.segmenter
    train = load_task_dataset("segmentation", "masks", scenes["seg"], "train")
    val = load_task_dataset("segmentation", "masks", scenes["seg"], "val")
    seg_cfg = SegmenterConfig(arch="Unet", num_classes=len(train.classes), classes=list(train.classes),
                              encoder=r.encoder, decoder_channels=list(r.decoder_channels))
    name = "segmenter-rain" if rain else "segmenter"
    best = train_segmenter(train, seg_cfg, root / f"{name}-run", iters=r.iters, batch_size=r.batch, lr=r.lr,
                           crop_size=r.crop, device=cfg.device, seed=cfg.seed, val_dataset=val, progress=progress,
                           rain=_task_rain(cfg, rain))
    _replace_dir(best, root / name)
    return str(root / name)


def _train_derainer(cfg: DemoConfig, r: DerainerRecipe, name: str, scenes: dict[str, str], root: Path,
                    force: bool, progress: bool) -> str:
    from derain.train import ModelConfig, OptimConfig, SourceConfig, TrainConfig, train

    seg = Path(scenes["seg"])
    tcfg = TrainConfig(
        name=f"{name}-run", out=str(root), seed=cfg.seed, iters=r.iters, batch_size=r.batch, patch_size=r.patch,
        augment="flips", device=cfg.device, log_every=10, val_every=max(r.iters // 3, 1),
        save_every=max(r.iters // 6, 1), val_limit=8, model=ModelConfig(name=r.model, options=dict(r.options)),
        train=SourceConfig(clean=str(seg / "train" / "images"), presets=list(cfg.severities), seed=cfg.seed),
        val=SourceConfig(clean=str(seg / "val" / "images"), presets=list(cfg.severities), seed=cfg.seed + 1000),
        optim=OptimConfig(lr=r.lr, decay_steps=max(r.iters, 1)),
    )
    result = train(tcfg, resume=_resumable(root / tcfg.name, force), progress=progress)
    if result.interrupted:
        raise KeyboardInterrupt
    _replace_dir(result.run_dir / "best", root / name)
    return str(root / name)


JOINT_RUNS = {"mspfn-lite+det": "det", "mspfn-lite+restore": "restore"}  # name -> which loss


def _is_joint_result(result: Any) -> bool:
    return isinstance(result, dict) and set(result) == set(JOINT_RUNS)


def _joint_runs(cfg: DemoConfig, scenes: dict[str, str], models: dict[str, str], force: bool,
                progress: bool, log: Callable[[str], None] = print) -> dict[str, str]:
    """``mspfn-lite+det`` (restoration + det_weight × detection loss) and its control ``mspfn-lite+restore``
    (the same steps, data and seed with the task weight 0), so the table shows what the task loss adds.

    With ``joint.side_by_side`` on a CPU of several cores, both train at once in two processes, each on half the
    cores (no progress bars then: their lines would interleave)."""
    weights = {name: cfg.joint.det_weight if kind == "det" else 0.0 for name, kind in JOINT_RUNS.items()}
    threads = _side_by_side_threads(cfg)
    if threads is None:
        return {name: _joint(cfg, scenes, models, force, progress, name, w) for name, w in weights.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    log(f"[demo] joint: {' and '.join(weights)} side by side, {threads} CPU thread(s) each")
    with ProcessPoolExecutor(len(weights), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_use_threads, initargs=(threads,)) as pool:
        runs = {name: pool.submit(_joint, cfg, scenes, models, force, False, name, w) for name, w in weights.items()}
        return {name: run.result() for name, run in runs.items()}


def _side_by_side_threads(cfg: DemoConfig) -> int | None:
    """Threads per joint run when they train side by side (half of torch's CPU threads), None to run them in turn
    (a GPU, one core, or ``joint.side_by_side=false``)."""
    import torch

    from derain.runtime import resolve_device

    if not cfg.joint.side_by_side or resolve_device(cfg.device).type != "cpu" or torch.get_num_threads() < 2:
        return None
    return torch.get_num_threads() // len(JOINT_RUNS)


def _use_threads(threads: int) -> None:
    """Process initializer of a side-by-side joint run: its share of the CPU threads."""
    import torch

    torch.set_num_threads(threads)


def _joint(cfg: DemoConfig, scenes: dict[str, str], models: dict[str, str], force: bool, progress: bool,
           name: str, det_weight: float) -> str:
    from derain.train import ModelConfig, OptimConfig
    from downstream.joint import JointConfig, JointDataConfig, JointTrainer, JointWeights

    r = cfg.joint
    jcfg = JointConfig(
        name=name, out=str(Path(cfg.out) / "joint"), seed=cfg.seed, iters=r.iters, batch_size=r.batch,
        crop=r.crop, device=cfg.device, log_every=10, val_every=max(r.iters, 1), save_every=max(r.iters // 3, 1),
        val_limit=r.val_images, derainer=ModelConfig(name=cfg.mspfn.model, options=dict(cfg.mspfn.options),
                                           init=models["mspfn-lite"]),
        task="detection", data=JointDataConfig(format="yolo", path=scenes["det_yaml"]),
        task_model=models["detector"], presets=list(cfg.severities),
        weights=JointWeights(restore=1.0, task=det_weight), optim=OptimConfig(lr=r.lr, decay_steps=10**6),
    )
    run_dir = Path(jcfg.out) / jcfg.name
    result = JointTrainer(jcfg, resume=_resumable(run_dir, force), progress=progress).run()
    if result.interrupted:
        raise KeyboardInterrupt
    return str(run_dir / "last")  # the tuned derainer after all steps (best/ is chosen on val mAP)


def _bench(cfg: DemoConfig, scenes: dict[str, str], models: dict[str, str], force: bool, progress: bool) -> str:
    from eval.bench import BenchConfig, DatasetSpec, DerainerSpec, run_bench
    from eval.bench_config import TaskModelSpec

    def task_models(task: str, model: str) -> list[TaskModelSpec]:
        """The clean-trained model and the rain-trained one (the third strategy) of a task."""
        return [TaskModelSpec(f"{task}-clean", models[model]),
                TaskModelSpec(f"{task}-rain", models[f"{model}-rain"], trained_on="rain")]

    tuned_with = {"mspfn-lite+det": "det-clean"}  # the jointly tuned derainer and the detector it was tuned with
    bcfg = BenchConfig(
        name="demo", seed=cfg.seed, device=cfg.device, severities=list(cfg.severities), rain_seeds=cfg.rain_seeds,
        derain_compile=cfg.derain_compile,
        out=str(Path(cfg.out) / "bench"),
        datasets=[
            DatasetSpec(name="scenes-det", task="detection", format="yolo", path=scenes["det_yaml"],
                        models=task_models("det", "detector"), imgsz=cfg.size),
            DatasetSpec(name="scenes-seg", task="segmentation", format="masks", path=scenes["seg"],
                        models=task_models("seg", "segmenter")),
        ],
        derainers=[DerainerSpec(name="identity", model="identity")]
        + [DerainerSpec(name=n, model=models[n], tuned_with=tuned_with.get(n))
           for n in ("prenet", "mspfn-lite", *JOINT_RUNS)],
    )
    return str(run_bench(bcfg, force=force, progress=progress))


def _report(cfg: DemoConfig, bench_dir: str) -> str:
    from reports.build import build_report

    report = build_report([bench_dir], Path(cfg.out) / "report", formats=cfg.report_formats)
    html = report.out / "report.html"
    return str(html if html.is_file() else report.out / "report.md")


def _resumable(run_dir: Path, force: bool) -> bool:
    """Resume an interrupted training run unless ``force`` (which starts it afresh)."""
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    return (run_dir / "last" / "state.pt").is_file()


# -- shipped weights -----------------------------------------------------------------------------
def _replace_dir(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(models: dict[str, str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, models.values()):
        out += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return out


def write_manifest(root: Path, cfg: DemoConfig, models: dict[str, str]) -> Path:
    """``root/MANIFEST.json``: each model's path (relative), every file's sha256, the recipe and the command."""
    from derain.fileio import atomic_write_text

    files = {str(f.relative_to(root)): {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in _files(models)}
    manifest = {
        "command": RETRAIN_COMMAND,
        "note": "trained by the command above; copy its OUT/models/{detector.pt,segmenter,detector-rain.pt,"
                "segmenter-rain,mspfn-lite,prenet} and MANIFEST.json here to ship them",
        "models": {k: str(Path(v).relative_to(root)) for k, v in models.items()},
        "files": files,
        "recipe": model_recipe(cfg),
    }
    path = root / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path


def shipped_models(cfg: DemoConfig, assets: Path = ASSETS) -> dict[str, str] | None:
    """The shipped model paths when ``assets`` holds weights for ``cfg``'s recipe (checksums verified), else None."""
    path = assets / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest["recipe"] != json.loads(json.dumps(model_recipe(cfg))):
        return None
    for rel, meta in manifest["files"].items():
        f = assets / rel
        if not f.is_file() or _sha256(f) != meta["sha256"]:
            raise FileNotFoundError(f"shipped demo weight {f} is missing or altered (sha256 differs from {path}); "
                                    f"restore it from git, or re-create all with `{RETRAIN_COMMAND}`")
    return {k: str(assets / v) for k, v in manifest["models"].items()}
