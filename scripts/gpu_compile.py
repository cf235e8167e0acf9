"""Issue 17's GPU question: how fast does the generator run with NHWC tensors and under
torch.compile, against the eager NCHW path? (On an H200, 2026-11-28: compiled NHWC 3.1× eager
NCHW, 56.9 MP/s; README, Performance. The engine's `--compile` is that variant.)

The 32-channel 3×3 convolutions that carry most of the work run at 51–59 TFLOP/s in NCHW fp16
on an H100/H200; cuDNN's NHWC kernels skip the layout transposes around the tensor cores, and
torch.compile fuses the ConvLSTM gates' element-wise work ("reduce-overhead" adds CUDA graphs,
which take the launch overhead of the recurrent steps away). Each variant is timed on a batch
of frames the way `derain video --working-size full` batches them (best of --repeat calls, as
`derain bench` times), and its output compared with the eager NCHW one (largest difference in
1/255). Prints one line per variant and writes JSON.

    python scripts/gpu_compile.py [--size 720x480] [--batch 8] [--repeat 10] [--json OUT]
    python scripts/gpu_compile.py --device cpu --size 64x48 --batch 1 --repeat 1   # a dry run
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from collections.abc import Callable

import torch

from derain.benchmark import _best_time, flops_per_megapixel
from derain.engine import pick_device
from derain.model import Generator
from derain.weights import load_weights


def variants(model: Generator) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The ways to run the generator: name -> function of an N×3×H×W batch, returning the image.
    Compiled variants are built lazily, so one that fails to compile costs only its own row."""

    def eager(m: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: m(x, side_outputs=False).image

    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def compiled(m: torch.nn.Module, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
        fn = torch.compile(m, mode=mode, dynamic=False)
        return lambda x: fn(x, side_outputs=False).image

    return {
        "eager NCHW (today)": eager(model),
        "eager NHWC": eager(nhwc),
        "compile NHWC": compiled(nhwc, "default"),
        "compile NHWC + CUDA graphs": compiled(nhwc, "reduce-overhead"),
        "compile NHWC max-autotune": compiled(nhwc, "max-autotune"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="720x480", help="W×H of each frame")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", help="comma-separated variant names (default: all)")
    parser.add_argument("--json")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    device = pick_device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32  # as Derainer runs it there
    model = load_weights(None)[0].to(device, dtype).eval().requires_grad_(False)  # the shipped weights
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.rand(args.batch, 3, height, width, device=device, dtype=dtype)
    megapixels = args.batch * width * height / 1e6
    tflop = flops_per_megapixel(model.config) * megapixels / 1e12  # per batch
    rows, reference = [], None
    chosen = set(args.only.split(",")) if args.only else None
    with torch.inference_mode():
        for name, run in variants(model).items():
            if chosen is not None and name not in chosen:
                continue
            inp = x.contiguous(memory_format=torch.channels_last) if "NHWC" in name else x
            try:
                start = time.perf_counter()
                out = run(inp).float()  # the first call compiles
                sync()
                first = time.perf_counter() - start
                for _ in range(2):
                    run(inp)
                sync()
                seconds = _best_time(functools.partial(run, inp), args.repeat, device)[0]  # best of, as derain bench
            except Exception as error:  # a variant that cannot run here is a row, not the end
                print(f"{name:>28}: failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}", flush=True)
                rows.append({"name": name, "error": f"{type(error).__name__}: {error}"[:500]})
                continue
            reference = out if reference is None else reference
            diff = float((out - reference).abs().max()) * 255
            row = {
                "name": name,
                "seconds": seconds,
                "first_call_seconds": first,
                "mp_per_second": megapixels / seconds,
                "tflop_per_second": tflop / seconds,
                "max_diff_255": diff,
            }
            rows.append(row)
            print(
                f"{name:>28}: {seconds * 1e3:8.1f} ms per batch of {args.batch}  {row['mp_per_second']:6.1f} MP/s"
                f"  {row['tflop_per_second']:5.1f} TFLOP/s  first call {first:5.1f} s  vs eager {diff:.3f}/255",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": [width, height], "batch": args.batch, "device": str(device), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
