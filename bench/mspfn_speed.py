"""MSPFN forward speed: fast zero-state ConvLSTM path vs the literal cell, side by side in one run.

Prints, per device (CPU always; CUDA with bf16 autocast when a GPU is present) and per way of running it — first
the product's default (``derain.runtime.inference_policy``: on CPU channels_last and torch.compile), then the plain
layouts: forward ms, images/s, the fast/literal ratio, peak memory, FLOPs per forward (torch's FLOP counter of
the eager model: the work, whatever runs it) and achieved GFLOP/s against a measured float32 matmul GFLOP/s of
the same machine. Compiled rows exclude the compile time (printed separately).

    python bench/mspfn_speed.py [--model mspfn-m17n1] [--size 480x320] [--repeats 5] [--no-plain]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from derain import build_model
from derain.runtime import inference_policy, model_forward


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 (TF32 off) matmul throughput in GFLOP/s: the machine's practical peak."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.backends.cuda.matmul.allow_tf32 = False
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times[1:]) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def time_forward(model: Callable, x: torch.Tensor, amp: bool) -> float:
    """One timed forward in seconds (inference mode, optional bf16 autocast on CUDA)."""
    device = x.device
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        sync(device)
        t = time.perf_counter()
        model(x)
        sync(device)
    return time.perf_counter() - t


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cpu_peak_memory_mb(model: Callable, x: torch.Tensor) -> float:
    """Peak resident memory (MB) one forward adds on top of what the process holds (Linux VmHWM, reset first)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets the peak-RSS high-water mark to the current RSS
    base = _status_kb("VmRSS")
    with torch.inference_mode():
        model(x)
    return (_status_kb("VmHWM") - base) / 1024


def bench_device(name: str, device: torch.device, h: int, w: int, repeats: int, channels_last: bool,
                 compile: bool = False, label: str = "") -> dict:
    """Fast vs literal MSPFN in one layout (compiled or not): times, FLOPs, peak memory, max |diff| to the literal
    eager model (the reference every way of running must equal)."""
    amp = device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    fast = build_model(name, fast=True).eval().to(device, memory_format=fmt)
    literal = build_model(name, fast=False).eval().to(device, memory_format=fmt)
    literal.load_state_dict(fast.state_dict())
    x = torch.rand(1, 3, h, w, device=device).contiguous(memory_format=fmt)
    flops = {"fast": count_flops(fast, x), "literal": count_flops(literal, x)}
    with torch.inference_mode():
        reference = literal(x)
    runs = {"fast": model_forward(fast, compile), "literal": model_forward(literal, compile)}
    compile_s = {}
    for k, m in runs.items():  # warm-up (and compilation)
        compile_s[k] = time_forward(m, x, amp)
    with torch.inference_mode():
        diff = max((m(x) - reference).abs().max().item() for m in runs.values())
    times: dict[str, list[float]] = {"fast": [], "literal": []}
    for _ in range(repeats):  # interleaved so both see the same machine state
        times["fast"].append(time_forward(runs["fast"], x, amp))
        times["literal"].append(time_forward(runs["literal"], x, amp))
    peak = matmul_gflops(device)
    result = {"device": str(device), "amp": "bf16" if amp else "fp32", "max_abs_diff": diff,
              "layout": ("channels_last" if channels_last else "NCHW") + (" + compile" if compile else ""),
              "label": label, "matmul_gflops": peak, "first_call_s": compile_s if compile else None}
    for k in ("fast", "literal"):
        sec = statistics.median(times[k])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            time_forward(runs[k], x, amp)
            mem = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            mem = cpu_peak_memory_mb(runs[k], x)
        result[k] = {"ms": sec * 1e3, "img_per_s": 1 / sec, "gflop": flops[k] / 1e9,
                     "gflops_achieved": flops[k] / sec / 1e9, "peak_mem_mb": mem}
    result["speedup"] = statistics.median(times["literal"]) / statistics.median(times["fast"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mspfn-m17n1")
    ap.add_argument("--size", default="480x320", help="WxH")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    ap.add_argument("--no-plain", action="store_true", help="only the default product path, not the plain layouts")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"{args.model} forward at {w}x{h}, batch 1, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    runs = []
    for device in devices:
        policy = inference_policy(device, model=build_model(args.model))
        runs.append((device, policy.channels_last, policy.compile, "default product path (inference_policy)"))
        if not args.no_plain:
            runs += [(device, cl, False, "plain") for cl in (True, False) if (cl, False) != runs[-1][1:3]]
    for device, channels_last, compile, label in runs:
        r = bench_device(args.model, device, h, w, args.repeats, channels_last, compile, label)
        first = r["first_call_s"]
        print(f"\n[{r['device']}, {r['amp']}, {r['layout']}: {label}]  matmul peak {r['matmul_gflops']:.1f} GFLOP/s, "
              f"max |diff| to the literal eager model {r['max_abs_diff']:.2e}"
              + (f", first call (compiling) fast {first['fast']:.1f} s, literal {first['literal']:.1f} s"
                 if first else ""))
        print(f"{'path':8} {'ms':>9} {'img/s':>8} {'GFLOP':>8} {'GFLOP/s':>9} {'% of mm':>8} {'peak MB':>8}")
        for k in ("fast", "literal"):
            s = r[k]
            print(f"{k:8} {s['ms']:9.1f} {s['img_per_s']:8.3f} {s['gflop']:8.1f} {s['gflops_achieved']:9.1f} "
                  f"{100 * s['gflops_achieved'] / r['matmul_gflops']:7.1f}% {s['peak_mem_mb']:8.1f}")
        print(f"speed-up fast/literal: {r['speedup']:.2f}x  (target >= 1.8x)")
        if args.json:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
