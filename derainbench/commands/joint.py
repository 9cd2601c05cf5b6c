"""``derainbench joint``: fine-tune a derainer jointly with a task loss (detection, segmentation, instance)."""

from __future__ import annotations

import argparse

from derainbench.commands.common import DATASET_FORMATS_HELP, add_config_arguments, interrupted_exit_code

HELP = """\
Task-driven deraining: loss = λ_restore·MSPFN loss + λ_task·the task's training loss on the derained images
(task=detection: YOLO's detection loss; segmentation: pixel cross-entropy; instance: YOLO's segmentation loss)
+ λ_feat·feature consistency (MSE between the task model's features of derained and clean images)
(weights.restore / .task / .feat; 0 skips a term). The task model is frozen by default
(gradients still flow through it into the derainer); unfreeze_task=true trains it too (task_lr).
Clean labelled images are rained on the fly with the configured presets, seeded by (seed, step); crop=SIZE
trains on random windows (needed when image sizes differ).

""" + DATASET_FORMATS_HELP + """
Examples:
  derainbench joint --config configs/joint_demo.yaml
  derainbench joint --config configs/joint_demo.yaml weights.restore=0 iters=100 device=cpu
  derainbench joint --config configs/joint_demo.yaml --resume     # continue exactly where it stopped
  derainbench joint --config configs/joint_demo.yaml derainer.init=deraining.pth   # a task-driven Restormer

The derainer: derainer.name (a registered derainer) with derainer.options, starting from derainer.init (a
checkpoint folder or a weights file); derainer.init alone takes the architecture the file holds (a derainbench
checkpoint's, a built-in's, or a zoo architecture such as the authors' Restormer deraining.pth, see
`derainbench models`), saved as our checkpoint folder that records it.

The run folder <out>/<name>/ gets config.yaml, log.csv, before.json, last/ and best/ derainer checkpoints
(best = best validation task metric; load with `derainbench derain --model <out>/<name>/best`) and
summary.json {task, metric, before, after, psnr_y_before, psnr_y_after}.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("joint", help="fine-tune a derainer with a task loss", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, "YAML recipe (see configs/joint_demo.yaml)", resumable=True,
                         run_files="last/, best/, log.csv, config.yaml, test.json, tb/, before.json, summary.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from derain.config import load_config
    from downstream.joint import JointConfig, JointTrainer

    cfg = load_config(JointConfig, args.config, args.overrides)
    trainer = JointTrainer(cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    result = trainer.run()
    if result.interrupted:
        return interrupted_exit_code(result)
    if not trainer.dist.is_main:  # under torchrun only rank 0 writes and reports
        return 0
    summary = (result.run_dir / "summary.json").read_text()
    print(f"done: {result.step} steps; checkpoints and summary.json in {result.run_dir}\n{summary}", end="")
    return 0
