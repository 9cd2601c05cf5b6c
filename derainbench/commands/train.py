"""``derainbench train``: train a derainer from a YAML recipe plus ``key=value`` overrides."""

from __future__ import annotations

import argparse

from derainbench.commands.common import add_config_arguments, interrupted_exit_code

HELP = """\
Train a derainer. Defaults are the MSPFN paper recipe (Charbonnier + 0.05 Laplacian loss, Adam
5e-4·0.8^(step/20000)+1e-6, batch 12, 96-px patches, one random dihedral transform per batch).

Examples:
  derainbench train --config configs/mspfn_rain13k.yaml train.pairs=data/Rain13K
  derainbench train --config configs/mspfn_lite_demo.yaml iters=200 device=cpu
  derainbench train --config configs/mspfn_lite_demo.yaml --resume     # continue exactly where it stopped
  torchrun --nproc_per_node 2 -m derainbench train --config ...        # DistributedDataParallel

Overrides use dotted keys (model.name=prenet, optim.lr=1e-4, train.clean=my_photos/); unknown keys
are errors. model.init=PATH starts from a checkpoint folder or a weights file; with model.name unset it also
takes the architecture from it (e.g. the authors' Restormer deraining.pth, a zoo architecture).
The run folder <out>/<name>/ gets config.yaml, log.csv, last/ and best/ checkpoints.
Ctrl-C or SIGTERM saves last/ and exits; --resume continues from it.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a derainer", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, "YAML recipe (see configs/); omitted = all defaults", resumable=True,
                         run_files="last/, best/, log.csv, config.yaml, test.json, tb/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from derain.config import load_config
    from derain.train import TrainConfig, train

    cfg = load_config(TrainConfig, args.config, args.overrides)
    result = train(cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    if result.interrupted:
        return interrupted_exit_code(result)
    best = f", best val {result.metric} {result.best_value:.3f}" if result.best_value is not None else ""
    print(f"done: {result.step} steps{best}; checkpoints in {result.run_dir}")
    return 0
