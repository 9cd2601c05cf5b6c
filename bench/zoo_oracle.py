"""Zoo derainers against their authors' own code, at the released configurations and other image sizes.

The shared fixture (``../shared/data/zoo_oracle``) covers small configurations at 96×128; this check runs the authors'
code itself (from snapshots of swz30/Restormer and swz30/MPRNet, e.g. made with ``git clone``; the files are read
from the snapshot into a scratch folder, never into this project) with the released widths and depths and seeded
random weights, saves the checkpoints exactly as their training scripts do, derains a real photo the way their
``Deraining/test.py`` does, and compares with ``derainbench derain --model FILE`` (the 8-bit PNG) and with
``load_derainer`` + ``derain_tensor`` (float).

    python bench/zoo_oracle.py --restormer /path/to/Restormer --mprnet /path/to/MPRNet

A path may be a work tree or a bare git directory (its HEAD is read).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from skimage import data

from derain.checkpoint import load_derainer
from derain.inference import derain_tensor
from derainbench.cli import main as cli

SOURCES = {"Restormer": "basicsr/models/archs/restormer_arch.py", "MPRNet": "Deraining/MPRNet.py"}


def read_source(repo: Path, rel: str) -> str:
    if (repo / rel).is_file():
        return (repo / rel).read_text()
    return subprocess.run(["git", "--git-dir", str(repo), "show", f"HEAD:{rel}"], capture_output=True, text=True,
                          check=True).stdout


def authors_module(repo: Path, arch: str, scratch: Path) -> object:
    path = scratch / f"authors_{arch.lower()}.py"
    path.write_text(read_source(repo, SOURCES[arch]))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def authors_restormer(module: object, img: np.ndarray, ckpt: Path) -> np.ndarray:
    """Restormer's Deraining/test.py: load ``['params']``, pad to a multiple of 8 where needed, clamp, crop."""
    model = module.Restormer()
    model.load_state_dict(torch.load(ckpt, weights_only=True)["params"])
    model.eval()
    factor = 8
    with torch.no_grad():
        input_ = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
        h, w = input_.shape[2], input_.shape[3]
        H, W = ((h + factor) // factor) * factor, ((w + factor) // factor) * factor  # noqa: N806
        padh = H - h if h % factor != 0 else 0
        padw = W - w if w % factor != 0 else 0
        input_ = F.pad(input_, (0, padw, 0, padh), "reflect")
        restored = model(input_)[:, :, :h, :w]
        return torch.clamp(restored, 0, 1).permute(0, 2, 3, 1).squeeze(0).numpy()


def authors_mprnet(module: object, img: np.ndarray, ckpt: Path) -> np.ndarray:
    """MPRNet's Deraining/test.py: ``utils.load_checkpoint`` (strip ``module.``), no padding, first output, clamp."""
    model = module.MPRNet()
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    model.load_state_dict({k[7:]: v for k, v in state.items()})
    model.eval()
    with torch.no_grad():
        restored = model(torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0))
        return torch.clamp(restored[0], 0, 1).permute(0, 2, 3, 1).squeeze(0).numpy()


def save_like_authors(arch: str, model: torch.nn.Module, path: Path) -> None:
    if arch == "Restormer":  # basicsr's save_network: {'params': state_dict}
        torch.save({"params": model.state_dict()}, path)
    else:  # MPRNet's train.py under DataParallel
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict()}, path)


def check(arch: str, repo: Path, size: tuple[int, int], scratch: Path) -> None:
    module = authors_module(repo, arch, scratch)
    torch.manual_seed(0)
    model = getattr(module, arch)()  # the released configuration: the constructors' defaults
    with torch.no_grad():  # non-zero biases and norms, so every parameter shows in the output
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.empty_like(p).uniform_(-0.05, 0.05))
    ckpt = scratch / ("deraining.pth" if arch == "Restormer" else "model_deraining.pth")
    save_like_authors(arch, model, ckpt)
    h, w = size
    img8 = data.astronaut()[40 : 40 + h, 20 : 20 + w]
    img = np.float32(img8) / 255.0
    src = scratch / f"{arch}_{h}x{w}_in"
    src.mkdir(exist_ok=True)
    Image.fromarray(img8).save(src / "photo.png")
    ref = (authors_restormer if arch == "Restormer" else authors_mprnet)(module, img, ckpt)
    ours = load_derainer(ckpt)
    out = derain_tensor(ours, torch.from_numpy(img).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    dst = scratch / f"{arch}_{h}x{w}_out"
    if cli(["derain", "--model", str(ckpt), "--input", str(src), "--output", str(dst), "--no-progress"]) != 0:
        raise SystemExit(f"derainbench derain failed for {arch} at {h}x{w}")
    png = np.asarray(Image.open(dst / "photo.png")).astype(np.int16)
    ref8 = np.round(ref * 255).astype(np.int16)  # skimage img_as_ubyte rounds
    params = sum(p.numel() for p in model.parameters())
    print(f"{arch}: released configuration ({params:,} parameters), {h}x{w} photo: float max |ours - authors'| = "
          f"{np.abs(out - ref).max():.2e}; derain CLI PNG vs round(authors' * 255): max {np.abs(png - ref8).max()} "
          f"level(s), {(png != ref8).mean() * 100:.3f} % of values differ", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--restormer", type=Path, help="swz30/Restormer snapshot (work tree or git dir)")
    p.add_argument("--mprnet", type=Path, help="swz30/MPRNet snapshot (work tree or git dir)")
    p.add_argument("--sizes", nargs="+", default=["321x481", "264x392"], help="HxW photo crops (MPRNet's test "
                   "script has no padding: its sizes must be multiples of 8)")
    args = p.parse_args()
    torch.set_grad_enabled(True)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    with tempfile.TemporaryDirectory(prefix="zoo_oracle_") as tmp:
        for arch, repo in (("Restormer", args.restormer), ("MPRNet", args.mprnet)):
            if repo is None:
                continue
            for size in sizes:
                if arch == "MPRNet" and (size[0] % 8 or size[1] % 8):
                    continue
                check(arch, repo, size, Path(tmp))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
