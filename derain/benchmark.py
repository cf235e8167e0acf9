"""Speed and memory of the engine on a synthetic photo: against plain fp32, against the
hardware's own convolution speed measured in the same run, and optionally against onnxruntime."""

from __future__ import annotations

import functools
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .engine import Derainer, _pad_to_multiple, apply_gate
from .metrics import psnr
from .model import SIZE_MULTIPLE, Generator, GeneratorConfig

T = TypeVar("T")

#: Above this many pixels the fp32 reference is tiled too: untiled it would need tens of GB.
UNTILED_REFERENCE_LIMIT = 4_000_000
#: Side of the probe image whose FLOPs are counted and scaled to a megapixel (cost is linear).
FLOP_PROBE = 128
#: The model's own 3×3 convolution shapes, (channels, scale): the recurrent net's width at full
#: size and the autoencoder's widest layers at a quarter; the faster one is the "conv peak".
PEAK_SHAPES = ((32, 1), (256, 4))
#: Seconds per timed batch of peak convolutions: long enough to time, short enough not to wait.
PEAK_SECONDS = 0.3


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
    gflops: float = 0.0
    """Achieved model arithmetic, GFLOP/s."""
    first_call_seconds: float = 0.0
    """The untimed warm-up call: kernel set-up, and with ``compile`` the compilation."""


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


def _best_time(run: Callable[[], T], repeat: int, device: torch.device) -> tuple[float, T]:
    """Best wall time of ``repeat`` calls of ``run`` (already warmed up), and the last result."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def _row(
    name: str, settings: tuple[str, str, str], seconds: float, image: np.ndarray, flops_per_mp: float, copies: int = 1
) -> BenchRow:
    """A result row for ``copies`` of ``image`` done in ``seconds``; ``settings`` is (device,
    precision, tile). Peak memory is read now."""
    mp = copies * image.shape[0] * image.shape[1] / 1e6
    device = torch.device(settings[0])
    gflops = flops_per_mp * mp / seconds / 1e9
    return BenchRow(name, *settings, seconds, seconds / mp, mp / seconds, _peak_mb(device), gflops)


def time_derainer(
    name: str, derainer: Derainer, image: np.ndarray, repeat: int, flops_per_mp: float, batch: int = 1
) -> tuple[BenchRow, np.ndarray]:
    """Best of ``repeat`` timed runs after one warm-up; returns the row and the output. A
    ``batch`` over 1 times that many copies of ``image`` through :meth:`Derainer.run_batch`, as
    video frames run (the final map only)."""

    def clean(photo: np.ndarray) -> np.ndarray:
        return derainer.run_batch([photo] * batch, all_maps=False)[0].image if batch > 1 else derainer.clean(photo)

    # Warm-up: oneDNN builds its kernels per input shape, so warm up on the shapes timed below.
    warm = image if image.shape[0] * image.shape[1] <= UNTILED_REFERENCE_LIMIT else image[:1024, :1024]
    first = _best_time(lambda: clean(warm), 1, derainer.device)[0]
    _reset_peak(derainer.device)
    seconds, out = _best_time(lambda: clean(image), repeat, derainer.device)
    tile = "auto" if derainer.tile is None else str(derainer.tile or "none")
    settings = (str(derainer.device), derainer.precision.value, tile)
    row = _row(name, settings, seconds, image, flops_per_mp, batch)
    row.first_call_seconds = first
    return row, out


def flops_per_megapixel(config: GeneratorConfig) -> float:
    """Forward-pass FLOPs per megapixel (multiply-adds count as two) of the generator ``config``
    describes.

    Counted on a plain fp32 copy of the architecture on the CPU (the count depends on nothing
    else), since the engine's fused oneDNN layers are invisible to the FLOP counter."""
    model = Generator(config).eval()
    x = torch.zeros(1, 3, FLOP_PROBE, FLOP_PROBE)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x, side_outputs=False)
    return counter.get_total_flops() / (FLOP_PROBE * FLOP_PROBE) * 1e6


def conv_peaks(derainer: Derainer, width: int, height: int) -> dict[str, float]:
    """GFLOP/s of lone 3×3 convolutions at the model's shapes, run exactly as the engine runs them.

    Same device, dtype, memory layout and autocast as ``derainer``; the area is the photo's
    (or one tile's). This is what the hardware and its convolution library reach on this
    model's layers in this process: the ceiling the whole model is compared with.
    """
    side = min(max(width, height), derainer._tile_size(height, width))
    height, width = min(height, side), min(width, side)
    dtype = next(derainer.model.parameters()).dtype
    layout = torch.channels_last if derainer.channels_last else torch.contiguous_format
    peaks = {}
    for channels, scale in PEAK_SHAPES:
        h, w = height // scale, width // scale
        conv = torch.nn.Conv2d(channels, channels, 3, 1, 1).to(derainer.device, dtype, memory_format=layout).eval()
        x = torch.rand(1, channels, h, w, device=derainer.device, dtype=dtype).contiguous(memory_format=layout)
        flops = 2 * channels * channels * 9 * h * w

        def run(conv=conv, x=x, calls=1) -> None:
            with torch.inference_mode(), derainer._autocast():
                for _ in range(calls):
                    conv(x)

        run()  # warm-up; then as many calls as fill PEAK_SECONDS
        calls = max(1, min(10_000, math.ceil(PEAK_SECONDS / _best_time(run, 1, derainer.device)[0])))
        seconds = _best_time(functools.partial(run, calls=calls), 3, derainer.device)[0]
        peaks[f"{channels}ch {w}x{h}"] = flops * calls / seconds / 1e9
    return peaks


def time_onnx(
    weights: str | None, steps: int, image: np.ndarray, repeat: int, flops_per_mp: float, gate: bool
) -> tuple[BenchRow, np.ndarray]:
    """onnxruntime's CPU speed on the same weights, steps and photo (untiled fp32, its own threads);
    the output gated as the engine gates it, after the timing (the graph is the network alone)."""
    from .export import export_onnx, require

    require("onnxruntime")
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(path, weights, steps)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    height, width = image.shape[:2]
    padded = _pad_to_multiple(image, SIZE_MULTIPLE)
    x = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], np.float32) / 255

    def run() -> list[np.ndarray]:
        return session.run(None, {"image": x})

    run()
    _reset_peak(torch.device("cpu"))
    seconds, (derained, attention) = _best_time(run, repeat, torch.device("cpu"))
    out = derained[0]
    if gate:
        apply_gate(torch.from_numpy(out), torch.from_numpy(x[0]), torch.from_numpy(attention[0, -1]))
    clean = np.clip(np.rint(out.transpose(1, 2, 0)[:height, :width] * 255), 0, 255).astype(np.uint8)
    return _row("onnxruntime", ("cpu", "fp32", "none"), seconds, image, flops_per_mp), clean


@dataclass
class BenchReport:
    width: int
    height: int
    steps: int
    rows: list[BenchRow]
    speedup: float | None
    """Plain fp32 time per megapixel (one photo at a time) / the default's (None without the reference run)."""
    psnr_default_vs_fp32: float | None
    flops_per_mp: float
    conv_peaks_gflops: dict[str, float]
    """GFLOP/s of lone 3×3 convolutions at the model's shapes, in the default row's settings."""
    conv_peak_gflops: float
    """The fastest of them: the ceiling for the default row."""
    peak_fraction: float
    """Default row's GFLOP/s / conv peak."""
    threads: int
    batch: int = 1
    """Copies of the photo per timed call (one forward pass where they fit)."""
    compiled: bool = False
    """The default row ran the model through ``torch.compile`` (its first call compiled it)."""
    onnx_speedup: float | None = None
    """onnxruntime's time / default time (None unless asked)."""
    psnr_onnx_vs_default: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def benchmark(
    weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: str = "auto",
    tile_overlap: int | None = None,
    steps: int | None = None,
    gate: bool | None = None,
    size: tuple[int, int] = (720, 480),
    repeat: int = 2,
    reference: bool = True,
    onnx: bool = False,
    compile: bool = False,
    batch: int = 1,
) -> BenchReport:
    """Time the chosen settings on a ``size`` (W, H) photo, or on ``batch`` copies of it at once, a
    conv peak, plain fp32 (one photo, untiled up to 4 MP, never compiled) and optionally onnxruntime
    (one photo). A compiled model compiles in the warm-up."""
    width, height = size
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    if onnx and batch > 1:
        raise ValueError("onnxruntime is timed on one photo: leave out the batch or --onnx")
    if onnx and width * height > UNTILED_REFERENCE_LIMIT:
        raise ValueError(f"onnxruntime runs untiled: compare at most {UNTILED_REFERENCE_LIMIT // 1_000_000} MP")
    image = synthetic_photo(width, height)
    # The network at the photo's own size, whatever the commands' working size, and one pass (no
    # dense-drop second look, whose cost depends on the photo): these are its figures
    extra: dict = {"working_size": None, "dense_pass": False}
    if tile_overlap is not None:
        extra["tile_overlap"] = tile_overlap
    chosen = Derainer(
        weights, device=device, precision=precision, tile=tile, steps=steps, gate=gate, compile=compile, **extra
    )
    flops = flops_per_megapixel(chosen.model.config)
    peaks = conv_peaks(chosen, width, height)
    name = ("compiled" if compile else "default") + (f" ×{batch}" if batch > 1 else "")
    row, out = time_derainer(name, chosen, image, repeat, flops, batch)
    report = BenchReport(
        width,
        height,
        chosen.steps,
        [row],
        None,
        None,
        flops,
        peaks,
        max(peaks.values()),
        row.gflops / max(peaks.values()),
        torch.get_num_threads(),
        batch,
        compile,
    )
    if reference:
        untiled = width * height <= UNTILED_REFERENCE_LIMIT
        plain = Derainer(
            weights, device=device, precision="fp32", tile=0 if untiled else "auto", steps=steps, gate=gate, **extra
        )
        base_row, base_out = time_derainer("plain fp32" if untiled else "fp32 (tiled)", plain, image, repeat, flops)
        report.rows.append(base_row)
        report.speedup = base_row.seconds_per_mp / row.seconds_per_mp  # a batch against one photo at a time
        report.psnr_default_vs_fp32 = psnr(out, base_out)
    if onnx:
        onnx_row, onnx_out = time_onnx(weights, chosen.steps, image, repeat, flops, chosen.gate)
        report.rows.append(onnx_row)
        report.onnx_speedup = onnx_row.seconds / row.seconds
        report.psnr_onnx_vs_default = psnr(onnx_out, out)
    return report
