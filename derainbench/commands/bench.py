"""``derainbench bench``: score clean, rainy and derained images with a detector/segmenter per severity."""

from __future__ import annotations

import argparse
import os

from derainbench.commands.common import DATASET_FORMATS_HELP, add_config_arguments

HELP = """\
Run the downstream benchmark described by a YAML config (see configs/bench_demo.yaml):
for each dataset, the clean images (method "clean"), then for each rain severity the rainy images
(method "rainy", rain synthesized with the run seed exactly as `derainbench synth` writes it when run on the
dataset's image folder: each image's seed derives from the run seed and its path relative to that folder) and each
derainer's output go through the task model. Detection is scored with the COCO protocol (pycocotools:
mAP@[.5:.95], mAP@.5), instance segmentation with COCO mask and box mAP, segmentation with mIoU over the
dataset's summed confusion matrix (255 ignored);
PSNR/SSIM (Y channel, MATLAB rgb2ycbcr, no crop) of rainy/derained images against the clean ones.

Severities: the ladder 1-5 (severities=[1,2,3,4,5], the robustness-benchmark convention; 2 = light,
5 = heavy) or the named presets light (= rain100l), medium, heavy (= rain100h), heavy-haze; presets are
versioned (heavy@v1 = the rain of derainbench 0.2.0; see `derainbench synth --help`) and cells record the
version. rain_seeds=K scores synthetic rain with seeds seed..seed+K-1: values are means over the seeds, with std
and seeds columns, and intervals resample seeds too.

Rain sources: rainy: [{name: NAME, path: DIR}] of a dataset scores rainy copies made elsewhere as severity NAME.
DIR is the rained copy of the dataset's image folder or of any folder above it (e.g. the dataset root written
by `derainbench synth --with-labels DATA DATA-rainy`: path: DATA-rainy), in every format. Image IMAGES/REL is
looked up at DIR/REL, DIR/<last folder of IMAGES>/REL, DIR/<last two>/REL, ... (any image extension); the one
reading that finds rainy files is used; two (copies at two levels), none, or DIR being the clean image folder
itself are refused in one line naming the folders, and a labelled image without its rainy file is listed.

Task models and strategies: a dataset's model: PATH is its one task model (named "model", trained on clean
images); models: [{name: clean-trained, model: A.pt}, {name: rain-trained, model: B.pt, trained_on: rain}]
scores every condition and derainer with each (trained_on: clean | rain, default clean). Rows carry the
task_model column; cells of the first model keep the keys of a one-model run, so adding a model to a finished
run folder computes only the new model's cells. differences.csv compares derainers per task model and, across
task models, each later model's clean and rainy rows and derainers with the earlier ones' (paired bootstrap: same
images, same rain). A derainer entry's tuned_with: NAME says it was jointly tuned with that task model (e.g. by
`derainbench joint`); the report's strategies table shows it with that model only, beside rainy and each
derainer -> each task model.

Speed: every rainy and derained image is made once per run folder and shared by all cells, tasks and
datasets that need it (cache/, 8-bit PNGs keyed by content and derainer digest; safe to delete; cache=false
turns it off). Derained images are scored on the 8-bit grid, as saved outputs are. Images are read and rain
synthesized by DataLoader workers (workers=N; default half the cores, none on 2 cores); batch=N images per
task-model call (default 8), derain_batch=N per derainer call (default: on CPU as many images as fit 64k pixels,
1-8; 8 on GPU); channels_last (default on for CPU); derain_compile (default: on for CPU for paper-size MSPFN,
where torch.compile measured 1.5x faster, off for mspfn-lite, PReNet and on GPU; the first run compiles for 15-75 s);
derain_amp=true autocasts derainers on CUDA (bf16; off by default so scores do not depend on the GPU; it is part
of the derainer digest).

Output folder: config.yaml, results.csv (dataset, task, severity, method, metric, value, ci_low, ci_high,
std, seeds; includes drop_<m> = clean - rainy, gain_<m> = derained - rainy, recovery_<m> = gain / drop, and with
severity "mean" the robustness summary <m>_pc = mPC (the metric averaged over the run's severities),
<m>_rpc = mPC / clean (empty where clean is 0: undefined), <m>_gap = clean - mPC of rainy (the average
clean-to-rainy gap), <m>_gap_closed = share of that gap a derainer closes, gain_<m>_pc = mPC of a derainer -
mPC of rainy (defined with its interval even where the gap is 0);
ci_low/ci_high = 95 % paired-bootstrap interval over images, `bootstrap` resamples, seeded by the run seed),
differences.csv (derainer A - B per severity and for mPC, with intervals), summary.csv, per_seed.csv
(each seed's value of every seed-dependent row), per_image.csv (with the rain seed; with rain sources
rain_file, the rainy file a row scored), per_class.csv (AP, AP@.5, IoU per class), predictions/ (COCO
result JSON), samples/ (with the ground truth under samples/<dataset>/truth), timings.json, environment.json
(device, versions), cells/ (one JSON per finished (dataset, severity, method, rain seed); a rerun skips
them unless --force, so a crash loses at most one cell), inputs/ (the sha256 of every dataset file the cells
read). A rerun recomputes the cells whose inputs changed (config, weights, rain, scoring code, or the content of
an image, label or annotation file) and says which and why, naming changed files. OUT may not lie inside a
dataset's image folder.
`derainbench report OUT` turns the folder into tables, figures and image grids.

""" + DATASET_FORMATS_HELP + """
Examples:
  derainbench bench --config configs/bench_demo.yaml
  derainbench bench --config configs/bench_demo.yaml severities=[heavy] out=runs/bench/heavy-only
  derainbench bench --config configs/bench_demo.yaml "severities=[1,2,3,4,5]" bootstrap=2000
  derainbench bench --config configs/bench_demo.yaml rain_seeds=3 out=runs/bench/three-seeds
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark derainers on downstream tasks", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, "benchmark YAML (see configs/bench_demo.yaml)", required=True, force=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from derain.config import load_config
    from eval.bench import BenchConfig, run_bench
    from reports.tables import main_table_text

    cfg = load_config(BenchConfig, args.config, args.overrides)
    out = run_bench(cfg, force=args.force, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    print(main_table_text(out))  # the report's main table: task metrics, PSNR-Y, drop, recovery, robustness
    print(f"\nresults: {out / 'results.csv'} (every metric with its interval); tables and figures: "
          f"derainbench report {out}")
    return 0
