"""``derainbench derain``: run a derainer (registered name or checkpoint) over an image or a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from derain.inference import DEFAULT_OVERLAP, DEFAULT_STAT_PASSES

if TYPE_CHECKING:
    from torch import nn

HELP = """\
Derain an image or a folder of images with a registered derainer (optionally with foreign weights such as
the authors' PReNet release), one of our checkpoint folders, or a weights file exactly as its authors publish it
(the derainer zoo: Restormer's deraining.pth, MPRNet's model_deraining.pth, NAFNet, ... -- any architecture
`derainbench models` lists; .pth/.pt/.safetensors, wrapped in params/params_ema/state_dict or bare, with or without
module.). --model is read as: a registered name; else a checkpoint folder; else a weights file, which is a
built-in when its keys and shapes fit one exactly (the authors' PReNet release), else what spandrel detects. Files
are read with torch.load(weights_only=True): a pickle that would run code is refused and nothing in it runs. A zoo
model runs by its authors' test protocol (Restormer: reflect-pad bottom/right to a multiple of 8 where needed and
crop back; MPRNet: the first of its three outputs), checked against the authors' own code for Restormer and MPRNet.
Architectures whose original code is non-commercial (Restormer, MPRNet) say so when loaded. Nothing is downloaded.
Every input is written as <stem>.png (8-bit) under --output, which must not be the input folder; files already
there are refused unless --overwrite. A derainer whose output is not finite (NaN/inf: broken weights) stops with an
error instead of writing black images. Images of the same size are batched together.

Large images: --tile T runs the model on T×T crops sharing --tile-overlap pixels with their neighbours and
blends them with smooth raised-cosine weights, so memory on the device depends on T, not on the image. The
outer quarter of each overlap is pure context and the middle half is the blending ramp. Tiles start at
multiples of the model's size multiple (8 for MSPFN) so its pyramid stays aligned. MSPFN's channel attention
pools over the whole image: a first pass takes those statistics from a copy downscaled to 512 px, then
--tile-stat-passes tiled passes (default 1) gather them from the tiles themselves at full resolution, and a last
pass writes the output (so tiled MSPFN costs about twice the plain tiled time). How close tiled output is to
whole-image output (8-bit values, real photos, bench/tiling_error.py, tile 512, default overlaps):
  PReNet (authors' weights, overlap 64): within 1 level on Rain100L (tile 256); at most 2 levels on 0.0006 % of
    the values of 1200×800 COCO photos.
  MSPFN (the demo's mspfn-lite, overlap 128, 1 statistics pass): at most 1 level on four 1200×800 COCO photos
    (none of 11.5 M values off by more). With overlap 64: up to 7 levels (0.1 % of values off by more than
    one); without the statistics pass (0): up to 19 levels (1.6 %).
  Restormer and MPRNet (zoo) are NOT tile-exact: Restormer's attention mixes every position of the image and
    MPRNet's first stage splits the image into quadrants, so tiles compute another function. With random weights
    at the released sizes (bench/zoo_speed.py, tile 256 on 4 photos): Restormer up to 79 levels (31 % of values
    off by more than one; overlap 128 no better), MPRNet up to 109-114 levels (7 %). Prefer whole images; on the CPU
    whole-image Restormer needs about 8.7 GB at 1 MP (MPRNet 3.8 GB at 1 MP, 14.8 GB at 4 MP).

Examples:
  derainbench derain --model prenet --weights PReNet_Rain100L_PReNet6.pth --input rainy/ --output derained/
  derainbench derain --model runs/mspfn/best --input photo.jpg --output out/ --tile 512
  derainbench derain --model identity --input rainy/ --output copies/      # the no-deraining baseline
  derainbench derain --model pretrained_models/deraining.pth --input rainy/ --output restormer/   # Restormer
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("derain", help="run a derainer over an image or folder (optionally tiled)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="NAME_OR_CHECKPOINT_OR_FILE",
                   help="registered derainer (see `derainbench models`), a checkpoint folder (model.json + "
                        "model.safetensors), or an authors' weights file (zoo: Restormer, MPRNet, ...)")
    p.add_argument("--weights", type=Path, metavar="FILE",
                   help="weights for a registered name: .safetensors, or a plain .pth/.pt state dict "
                        "(loaded with weights_only=True); default: random init for names")
    p.add_argument("--input", required=True, type=Path, metavar="FILE_OR_DIR", help="an image or a folder")
    p.add_argument("--output", required=True, type=Path, metavar="DIR", help="folder for the derained PNGs")
    p.add_argument("--tile", type=int, metavar="T", help="tile size in pixels, e.g. 512 (default: whole images)")
    p.add_argument("--tile-overlap", type=int, metavar="N",
                   help=f"pixels shared by neighbouring tiles (default: the model's, 128 for MSPFN, else "
                        f"{DEFAULT_OVERLAP}; see above)")
    p.add_argument("--tile-stat-passes", type=int, default=DEFAULT_STAT_PASSES, metavar="N",
                   help=f"tiled passes that gather MSPFN's whole-image statistics before the output pass (default "
                        f"{DEFAULT_STAT_PASSES}; 0 keeps the downscaled copy's; other models ignore it)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="images (of the same size) or tiles per model call (default: on CPU as many as fit 64k "
                        "pixels, 1-8; 8 on GPU)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast on CUDA (default: bf16 for PReNet and MSPFN on GPUs with bf16, where PSNR on the 100 "
                        "real Rain100L pairs stayed within 0.01 dB of fp32; --amp on other GPUs: fp16; CPU: ignored)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: on for CPU, where MSPFN runs 1.7x faster; off on GPU until "
                        "measured there; see bench/RESULTS.md)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CPU where it measured faster: paper-size MSPFN "
                        "(mspfn, mspfn-m17n1) 1.5x; off for mspfn-lite (1.07-1.16x, less than the compile costs), "
                        "PReNet (0.96x) and on GPU; the environment variable DERAINBENCH_COMPILE=0|1 changes the "
                        "default). The first run compiles for 15-75 s; PyTorch caches the result on disk. Results are "
                        "the same to float rounding; if compiling fails, a warning says so and the model runs plainly")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files that already exist under --output (default: refuse, before any work)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model, derain every input into ``args.output``; returns the exit code."""
    from derain.checkpoint import load_derainer
    from derain.inference import derain_paths, tile_overlap
    from derain.runtime import inference_policy, resolve_device

    _check(args)
    model = load_derainer(args.model, weights=args.weights)
    overlap = tile_overlap(model, args.tile_overlap)
    if args.tile is not None and not 0 <= overlap < args.tile:
        given = "" if args.tile_overlap is not None else f" (the default for {args.model})"
        raise ValueError(f"--tile-overlap must be in [0, --tile) = [0, {args.tile}), got {overlap}{given}")
    policy = inference_policy(resolve_device(args.device), model=model, channels_last=args.channels_last,
                              amp=args.amp, batch_size=args.batch_size, compile=args.compile)
    if getattr(model, "derain_weights", None) is None and _has_parameters(model):
        print(f"warning: no --weights given, {args.model} runs with random initial weights", file=sys.stderr)
    if policy.compile:
        print(f"compiling {args.model} with torch.compile: the first image waits for it (15-75 s on a first run, "
              "seconds once PyTorch has cached it; --no-compile skips it)", file=sys.stderr)
    written = derain_paths(
        model, args.input, args.output, tile=args.tile, overlap=overlap, stat_passes=args.tile_stat_passes,
        batch_size=policy.batch_size, device=args.device, amp=policy.amp, channels_last=policy.channels_last,
        compile=policy.compile, progress=not args.no_progress, overwrite=args.overwrite,
    )
    print(f"derained {len(written)} image(s) with {args.model} -> {args.output}", file=sys.stderr)
    return 0


def _has_parameters(model: nn.Module) -> bool:
    return any(True for _ in model.parameters())


def _check(args: argparse.Namespace) -> None:
    """Argument values argparse cannot check; errors say which option."""
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.tile is not None and args.tile < 1:
        raise ValueError(f"--tile must be positive, got {args.tile}")
    if args.tile_stat_passes < 0:
        raise ValueError(f"--tile-stat-passes must be >= 0, got {args.tile_stat_passes}")
