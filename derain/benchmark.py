"""Speed and memory of the engine: default settings against plain fp32, on a synthetic photo."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .engine import Derainer
from .metrics import psnr

#: Above this many pixels the fp32 reference is tiled too: untiled it would need tens of GB.
UNTILED_REFERENCE_LIMIT = 4_000_000
#: Side of the probe image whose FLOPs are counted and scaled to a megapixel (cost is linear).
FLOP_PROBE = 128


@dataclass
class BenchRow:
    name: str
    device: str
    precision: str
    tile: str
    seconds: float
    seconds_per_mp: float
    mp_per_second: float
    peak_memory_mb: float
    """Peak process RSS on CPU, peak allocated memory on CUDA, while this row ran."""


def synthetic_photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, textured RGB test image (speed does not depend on content; denormals might)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.integers(-8, 9, (height, width, 3), dtype=np.int16)
    return np.clip(grain + smooth, 0, 255).astype(np.uint8)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
        except OSError:
            pass


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_derainer(name: str, derainer: Derainer, image: np.ndarray, repeat: int) -> tuple[BenchRow, np.ndarray]:
    """Best of ``repeat`` timed runs after one warm-up; returns the row and the output."""
    # Warm-up: oneDNN builds its kernels per input shape, so warm up on the shapes timed below.
    warm = image if image.shape[0] * image.shape[1] <= UNTILED_REFERENCE_LIMIT else image[:1024, :1024]
    out = derainer.clean(warm)
    _reset_peak(derainer.device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = derainer.clean(image)
        if derainer.device.type == "cuda":
            torch.cuda.synchronize(derainer.device)
        best = min(best, time.perf_counter() - start)
    mp = image.shape[0] * image.shape[1] / 1e6
    tile = "auto" if derainer.tile is None else str(derainer.tile or "none")
    row = BenchRow(
        name,
        str(derainer.device),
        derainer.precision.value,
        tile,
        best,
        best / mp,
        mp / best,
        _peak_mb(derainer.device),
    )
    return row, out


def flops_per_megapixel(derainer: Derainer) -> float:
    """Forward-pass FLOPs per megapixel (multiply-adds count as two)."""
    model = derainer.model
    x = torch.zeros(1, 3, FLOP_PROBE, FLOP_PROBE, device=derainer.device, dtype=next(model.parameters()).dtype)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / (FLOP_PROBE * FLOP_PROBE) * 1e6


@dataclass
class BenchReport:
    width: int
    height: int
    rows: list[BenchRow]
    speedup: float | None
    """Plain fp32 time / default time (None without the reference run)."""
    psnr_default_vs_fp32: float | None
    flops_per_mp: float
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def benchmark(
    weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: str = "auto",
    tile_overlap: int | None = None,
    size: tuple[int, int] = (720, 480),
    repeat: int = 2,
    reference: bool = True,
) -> BenchReport:
    """Time the chosen settings and plain fp32 (untiled up to 4 MP) on a ``size`` (W, H) photo."""
    width, height = size
    image = synthetic_photo(width, height)
    extra = {} if tile_overlap is None else {"tile_overlap": tile_overlap}
    chosen = Derainer(weights, device=device, precision=precision, tile=tile, **extra)
    row, out = time_derainer("default", chosen, image, repeat)
    flops = flops_per_megapixel(chosen)
    if not reference:
        return BenchReport(width, height, [row], None, None, flops, torch.get_num_threads())
    untiled = width * height <= UNTILED_REFERENCE_LIMIT
    reference = Derainer(weights, device=device, precision="fp32", tile=0 if untiled else "auto", **extra)
    base_row, base_out = time_derainer("plain fp32" if untiled else "fp32 (tiled)", reference, image, repeat)
    p = psnr(out, base_out)
    return BenchReport(
        width, height, [row, base_row], base_row.seconds / row.seconds, p, flops, torch.get_num_threads()
    )
