"""ultralytics' NMS as the bench calls it: its Python fallback (what runs when torchvision was never imported) vs
torchvision's kernel (what runs once ``downstream.detection`` imports torchvision), side by side on the same raw
outputs of the shipped demo detector over rained demo scenes, in two fresh processes; prints the time ratio and
whether the kept detections are identical.

    python bench/nms_speed.py [--images 48] [--batch 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TIMER = r"""
import sys, time, torch
if sys.argv[2] == "torchvision":
    import torchvision  # noqa: F401  (ultralytics uses its kernel only when already imported)
from ultralytics.utils.nms import non_max_suppression
raws = torch.load(sys.argv[1], weights_only=True)
non_max_suppression(raws[0].clone(), 0.001, 0.7, multi_label=True, max_det=300)  # warm-up
t = time.perf_counter()
out = [d for raw in raws for d in non_max_suppression(raw.clone(), 0.001, 0.7, multi_label=True, max_det=300)]
print(time.perf_counter() - t)
torch.save(out, sys.argv[1] + "." + sys.argv[2])
"""


def raw_outputs(n: int, batch: int, work: Path) -> Path:
    """The demo detector's raw outputs (before NMS) on ``n`` rained demo scenes, ``batch`` at a time."""
    import torch

    from derain.synth import synthesize
    from derainbench.demo import ASSETS
    from downstream.detection import letterbox, load_detector
    from downstream.scenes import generate_scenes

    generate_scenes(work / "scenes", n=n, size=160, seed=0, val_fraction=0.25, progress=False, overwrite=True)
    from derain.imageio import read_image, to_tensor

    images = sorted((work / "scenes" / "seg" / "train" / "images").glob("*.png"))[:n]
    x = torch.stack([to_tensor(synthesize(read_image(p), "heavy", seed=k)[0]) for k, p in enumerate(images)])
    det = load_detector(ASSETS / "detector.pt")
    raws = []
    with torch.inference_mode():
        for k in range(0, len(x), batch):
            xb, _, _ = letterbox(x[k:k + batch], 160, det.stride)
            raws.append(det.model(xb.float())[0].clone())
    path = work / "raw.pt"
    torch.save(raws, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_outputs(args.images, args.batch, Path(tmp))
        seconds = {}
        for kind in ("python", "torchvision"):
            out = subprocess.run([sys.executable, "-c", TIMER, str(raw), kind], capture_output=True, text=True,
                                 check=True, env={"YOLO_OFFLINE": "1", "PATH": ""})
            seconds[kind] = float(out.stdout.strip().splitlines()[-1])
        a, b = (torch.load(f"{raw}.{k}", weights_only=True) for k in ("python", "torchvision"))
        same = sum(torch.equal(p, q) for p, q in zip(a, b, strict=True))
        as_sets = sum({tuple(r) for r in p.tolist()} == {tuple(r) for r in q.tolist()}
                      for p, q in zip(a, b, strict=True))
        kept = sum(len(d) for d in a)
    print(f"{len(a)} images of 160 px, batches of {args.batch}, {kept} detections kept")
    print(f"ultralytics' Python NMS: {seconds['python']:.3f} s; torchvision's kernel: {seconds['torchvision']:.3f} s; "
          f"ratio {seconds['python'] / seconds['torchvision']:.1f}x")
    print(f"kept detections identical on {same} of {len(a)} images, the same set on {as_sets} (the others order "
          "equal-score detections differently)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
