"""The main job, offline: rain on the photos scikit-image ships, train ``mspfn-lite``, derain, score.

Stages write into one output folder and are skipped when already done (``force`` redoes them):

    data/clean/              held-out clean photos (the ones the demo training config validates on)
    data/{light,heavy}/      their rainy copies (+ ``.rain.json`` sidecars)
    train/mspfn-lite-demo/   the training run (checkpoints, log.csv)
    derained/<method>/<severity>/
    results.csv              tidy rows: dataset, severity, method, metric, value
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SEVERITIES = ("light", "heavy")
METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
# --fast shrinks everything so the whole pipeline runs in seconds (CI smoke test).
FAST_OVERRIDES = ["iters=4", "batch_size=2", "patch_size=32", "val_every=2", "save_every=2", "log_every=1",
                  "model.options={channels: 8, cfm_channels: 4, lstm_channels: [4, 8, 8], units: 1}"]


@dataclass
class DemoResult:
    out: Path
    rows: list[dict]
    seconds: float


def run_demo(out: str | Path = "runs/demo", fast: bool = False, force: bool = False, device: str = "auto",
             log: Callable[[str], None] = print) -> DemoResult:
    """Run every stage (skipping finished ones unless ``force``) and return the tidy result rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cfg = _train_config(out, fast, device)
    test_photos = _test_photo_names(cfg)
    _stage(out, "data", force, log, lambda: _make_data(out, test_photos, fast))
    _stage(out, "train", force, log, lambda: _train(cfg, force))
    rows = _stage(out, "score", force, log, lambda: _score(out, cfg, device))
    _write_results(out / "results.csv", rows)
    return DemoResult(out, rows, time.perf_counter() - t_start)


def _stage(out: Path, name: str, force: bool, log: Callable[[str], None], fn: Callable[[], object]) -> object:
    """Run ``fn`` unless ``out/.stages/name.json`` says it finished; record its result and time."""
    marker = out / ".stages" / f"{name}.json"
    if marker.is_file() and not force:
        log(f"[demo] {name}: done earlier (reused; --force to redo)")
        return json.loads(marker.read_text())["result"]
    t = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"result": result, "seconds": seconds}))
    log(f"[demo] {name}: {seconds:.1f} s")
    return result


def _train_config(out: Path, fast: bool, device: str):  # -> TrainConfig
    from derain.config import load_config
    from derain.train import TrainConfig

    path = REPO_CONFIGS / "mspfn_lite_demo.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"demo training recipe not found: {path} (run from a source checkout)")
    overrides = [f"out={out / 'train'}", f"device={device}", *(FAST_OVERRIDES if fast else [])]
    return load_config(TrainConfig, path, overrides)


def _test_photo_names(cfg) -> list[str]:
    """The photos the training recipe holds out (its validation selection) are the demo's test set."""
    from derain.samples import sample_photos

    names = list(sample_photos())
    val = cfg.val
    if val is None or val.clean != "skimage":
        raise ValueError("the demo recipe must validate on held-out skimage photos (val.clean: skimage)")
    held = names[val.skip : val.skip + (val.limit or len(names))]
    overlap = set(held) & set(names[cfg.train.skip :][: cfg.train.limit])
    if overlap:
        raise ValueError(f"demo test photos {sorted(overlap)} are also training photos; fix the recipe's skip/limit")
    return held


def _make_data(out: Path, names: list[str], fast: bool) -> dict:
    from derain.imageio import write_image
    from derain.samples import sample_photos
    from derain.synth import synthesize_folder

    photos = sample_photos()
    clean = out / "data" / "clean"
    for name in names:
        img = photos[name]
        if fast:
            img = img[:96, :128]
        write_image(clean / f"{name}.png", img)
    for sev in SEVERITIES:
        synthesize_folder(clean, out / "data" / sev, preset=sev, seed=0, progress=False)
    return {"photos": names}


def _train(cfg, force: bool) -> dict:
    from derain.train import train

    last = Path(cfg.out) / cfg.name / "last" / "state.pt"
    result = train(cfg, resume=last.is_file() and not force)
    if result.interrupted:
        raise KeyboardInterrupt
    return {"checkpoint": str(result.run_dir / "best"), "steps": result.step, "best_psnr_y": result.best_psnr}


def _score(out: Path, cfg, device: str) -> list[dict]:
    from derain.checkpoint import load_derainer
    from derain.imageio import list_images, read_tensor, write_image
    from derain.inference import derain_tensor
    from derain.metrics import compute_metrics
    from derain.runtime import resolve_device

    dev = resolve_device(device)
    ckpt = Path(cfg.out) / cfg.name / "best"
    methods = {"rainy": load_derainer("identity"), "mspfn-lite": load_derainer(ckpt).to(dev)}
    rows: list[dict] = []
    for sev in SEVERITIES:
        files = list_images(out / "data" / sev)
        for method, model in methods.items():
            sums = dict.fromkeys(METRICS, 0.0)
            for f in files:
                rainy = read_tensor(f).unsqueeze(0)
                clean = read_tensor(out / "data" / "clean" / f.name).unsqueeze(0)
                pred = derain_tensor(model, rainy.to(dev)).cpu()
                if method != "rainy":
                    write_image(out / "derained" / method / sev / f.name, pred[0])
                for k, v in compute_metrics(pred, clean).items():
                    sums[k] += float(v.mean())
            rows += [{"dataset": "skimage-photos", "severity": sev, "method": method, "metric": k,
                      "value": round(v / len(files), 6)} for k, v in sums.items()]
    return rows


def _write_results(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["dataset", "severity", "method", "metric", "value"])
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict]) -> str:
    """Method × severity table of PSNR/SSIM (Y channel, MATLAB rgb2ycbcr, no crop)."""
    cells = {(r["severity"], r["method"], r["metric"]): r["value"] for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sevs = list(dict.fromkeys(r["severity"] for r in rows))
    head = f"{'method':12}" + "".join(f"{s + ' PSNR-Y':>14}{s + ' SSIM-Y':>14}" for s in sevs)
    lines = ["PSNR/SSIM on Y (MATLAB rgb2ycbcr), no border crop", head]
    for m in methods:
        lines.append(f"{m:12}" + "".join(
            f"{cells[(s, m, 'psnr_y')]:14.2f}{cells[(s, m, 'ssim_y')]:14.4f}" for s in sevs))
    return "\n".join(lines)
