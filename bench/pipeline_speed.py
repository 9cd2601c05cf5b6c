"""Whole-benchmark speed: `derainbench bench` vs the naive route, side by side in one run.

Both routes score the same thing: every dataset of a bench config (detection and segmentation on the same
scenes), clean images, and per rain severity the rainy images and each derainer's output, with PSNR/SSIM.

- ours: ``run_bench`` on a fresh output folder (derain cache shared by the tasks, DataLoader-prefetched inputs,
  channels_last on CPU, batched calls where they pay), intervals off (the naive route has none);
- naive: what one does without it: per dataset and severity write the rainy images as PNGs (``synth``), derain
  the folder with ``derain_paths`` defaults into another PNG folder, score PSNR/SSIM with ``derainbench score``,
  then validate from disk: ultralytics' own validator for detection (labels copied beside the images), and the
  segmenter over a masks folder for segmentation. Every dataset derains its own copy.

    python bench/pipeline_speed.py                                   # the demo's data and models
    python bench/pipeline_speed.py --config runs/demo/bench/config.yaml --derainer mspfn-lite --repeats 1

Prints both wall times, the ratio, and each route's headline metrics (they must agree up to the 8-bit rounding
of derained images and the two detection evaluators' small differences).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from derain.checkpoint import load_derainer
from derain.config import load_config
from derain.imageio import write_image
from derain.inference import derain_paths
from downstream.datasets import yolo_label_path
from downstream.detection import offline_ultralytics
from downstream.tasks import load_task_dataset
from eval.bench import BenchConfig, DatasetSpec, rainy_image, run_bench


def ours(cfg: BenchConfig, out: Path) -> tuple[float, dict[str, float]]:
    """Seconds of a whole ``run_bench`` and its headline metrics per (dataset, severity, method)."""
    import pandas as pd

    t = time.perf_counter()
    run_bench(cfg, progress=False)
    seconds = time.perf_counter() - t
    res = pd.read_csv(out / "results.csv")
    keep = res[res.metric.isin(["map50", "miou", "psnr_y"]) & (res.severity != "mean")]
    return seconds, {f"{r.dataset}/{r.severity}/{r.method}/{r.metric}": r.value for r in keep.itertuples()}


def naive(cfg: BenchConfig, work: Path) -> tuple[float, dict[str, float]]:
    """Seconds and headline metrics of the disk route (see the module docstring)."""
    from derainbench.cli import main as cli

    t = time.perf_counter()
    metrics: dict[str, float] = {}
    derainers = {d.name: load_derainer(d.model, d.weights, **d.options) for d in cfg.derainers}
    for spec in cfg.datasets:
        dataset = load_task_dataset(spec.task, spec.format, spec.path, spec.split)
        n = len(dataset) if spec.limit is None else min(spec.limit, len(dataset))
        metric = "map50" if spec.task == "detection" else "miou"
        clean = work / spec.name / "none" / "clean"  # <method>/images: each route's images in a YOLO layout
        (clean / "images").mkdir(parents=True)
        for i in range(n):  # the clean images as a folder of their own (a user's val split)
            shutil.copy(dataset.image_path(i), clean / "images" / Path(dataset.image_path(i)).name)
        metrics[f"{spec.name}/none/clean/{metric}"] = validate(spec, dataset, clean, n, work)
        for sev in cfg.severities:
            rainy = work / spec.name / sev / "rainy"
            for i in range(n):
                name = Path(dataset.image_path(i)).name
                write_image(rainy / "images" / f"{Path(name).stem}.png",
                            rainy_image(dataset[i][0], sev, cfg.seed, name))
            folders = {"rainy": rainy}
            for name, model in derainers.items():
                folders[name] = work / spec.name / sev / name
                derain_paths(model, rainy / "images", folders[name] / "images", device=cfg.device, progress=False)
            for method, folder in folders.items():
                metrics[f"{spec.name}/{sev}/{method}/{metric}"] = validate(spec, dataset, folder, n, work)
                with contextlib.redirect_stdout(io.StringIO()) as buf:
                    cli(["score", "--pred", str(folder / "images"), "--gt", str(clean / "images"), "--json",
                         "--no-progress"])
                metrics[f"{spec.name}/{sev}/{method}/psnr_y"] = json.loads(buf.getvalue())["psnr_y"]
    return time.perf_counter() - t, metrics


def validate(spec: DatasetSpec, dataset: Any, folder: Path, n: int, work: Path) -> float:
    """mAP50 (ultralytics' validator over ``folder/images`` + labels copied to ``folder/labels``) or mIoU (the
    segmenter over a masks-layout folder linking ``folder/images`` and the dataset's masks)."""
    if spec.task == "detection":
        from ultralytics import YOLO

        root = folder
        (root / "labels").mkdir(exist_ok=True)
        for i in range(n):
            src = Path(dataset.image_path(i))
            if yolo_label_path(src).is_file():
                shutil.copy(yolo_label_path(src), root / "labels" / f"{src.stem}.txt")
        data = root / "data.yaml"
        data.write_text(yaml.safe_dump({"path": str(root.resolve()), "train": "images", "val": "images",
                                        "names": dict(enumerate(dataset.names))}))
        threads = torch.get_num_threads()  # ultralytics' select_device sets cpu_count - 1 threads for the process;
        with contextlib.redirect_stdout(io.StringIO()):  # restored below so the rest of the route keeps all cores
            m = YOLO(str(spec.model)).val(data=str(data), imgsz=spec.imgsz, batch=1, conf=0.001, iou=0.7,
                                          plots=False, device="cpu", workers=0, verbose=False,
                                          project=str(work / "val"))
        torch.set_num_threads(threads)
        return float(m.box.map50)
    from downstream.segmentation import evaluate_miou, load_segmenter

    root = folder.parent / f"{folder.name}-seg"
    (root / spec.split).mkdir(parents=True, exist_ok=True)
    src_root = Path(spec.path)
    shutil.copy(src_root / "classes.txt", root / "classes.txt")
    for sub, target in (("images", folder / "images"), ("masks", src_root / spec.split / "masks")):
        if not (root / spec.split / sub).exists():
            (root / spec.split / sub).symlink_to(Path(target).resolve())
    return evaluate_miou(load_segmenter(spec.model), load_task_dataset("segmentation", "masks", root, spec.split), n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="runs/demo/bench/config.yaml",
                    help="a bench config (default: the one `derainbench demo --out runs/demo` wrote)")
    ap.add_argument("--derainer", nargs="+", default=["mspfn-lite"], help="derainers of the config to keep")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs per route; the fastest counts")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (e.g. severities=[heavy])")
    args = ap.parse_args()
    offline_ultralytics()
    base = load_config(BenchConfig, args.config, args.overrides)
    base.derainers = [d for d in base.derainers if d.name in args.derainer]
    if not base.derainers:
        raise SystemExit(f"none of {args.derainer} is a derainer of {args.config}")
    base.device, base.bootstrap, base.samples, base.rain_seeds = "cpu", 0, 0, 1  # what the naive route does
    n_cells = sum(1 + len(base.severities) * (1 + len(base.derainers)) for _ in base.datasets)
    print(f"{args.config}: datasets {[d.name for d in base.datasets]}, severities {base.severities}, "
          f"derainers {[d.name for d in base.derainers]} ({n_cells} cells); {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, best of {args.repeats}")
    t_ours = t_naive = float("inf")
    for _ in range(args.repeats):  # alternate so both routes see the same machine state
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(BenchConfig, None, [])
            cfg.__dict__.update({**base.__dict__, "out": str(Path(tmp) / "ours")})
            t, m_ours = ours(cfg, Path(cfg.out))
            t_ours = min(t_ours, t)
        with tempfile.TemporaryDirectory() as tmp:
            t2, m_naive = naive(base, Path(tmp))
            t_naive = min(t_naive, t2)
        print(f"repeat: ours {t:.1f} s, naive {t2:.1f} s, {torch.get_num_threads()} threads", flush=True)
    print(f"\n{'cell / metric':<40} {'ours':>8} {'naive':>8}")
    for key, v in m_naive.items():
        print(f"{key:<40} {m_ours.get(key, float('nan')):8.4f} {v:8.4f}")
    print(f"\nours  (derainbench bench)         : {t_ours:7.1f} s")
    print(f"naive (PNGs + derain + score + val): {t_naive:7.1f} s")
    print(f"speed-up: {t_naive / t_ours:.2f}x")


if __name__ == "__main__":
    main()
