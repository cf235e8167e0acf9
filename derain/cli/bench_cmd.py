"""derain bench: how fast, how much memory."""

from __future__ import annotations

import click
from rich.table import Table

from ..benchmark import benchmark
from ..evaluate import report_json
from ..export import require
from .common import BadSetup, friendly, load_derainer, make_console, network_options
from .synth_cmd import parse_size


@click.command("bench")
@click.option(
    "--size", default="720x480", show_default=True, callback=parse_size, help="WIDTHxHEIGHT of the test photo."
)
@click.option("--repeat", default=2, show_default=True, type=click.IntRange(min=1), help="Timed runs; the best counts.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--reference/--no-reference",
    default=True,
    show_default=True,
    help="Also time plain fp32 (tiled above 4 MP) for the speed-up and accuracy figures.",
)
@click.option("--onnx", is_flag=True, help="Also time onnxruntime (CPU, fp32) on an export of the same weights.")
@click.option(
    "--batch",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Time N copies of the photo at once, in one forward pass where they fit, as video frames run "
    "on a GPU (the references still time one photo).",
)
@network_options
@friendly
def bench_cmd(
    size: tuple[int, int], repeat: int, as_json: bool, reference: bool, onnx: bool, batch: int, **model
) -> None:
    """Time the chosen settings against plain fp32 (no tiling) on a synthetic photo.

    Reports seconds, seconds per megapixel, megapixels per second, achieved GFLOP/s and
    peak memory for each run, the speed-up, how far apart the outputs are (PSNR), and the
    ratio of the achieved GFLOP/s to a convolution peak measured in the same run: lone 3×3
    convolutions at the model's own shapes, in the same precision and layout. The network
    runs at the full --size (the other commands derain large photos at a working size).

    \b
    Examples:
      derain bench                            # 720×480, auto device and precision
      derain bench --onnx --steps 4           # onnxruntime too, 4 attention steps
      derain bench --device cuda --compile --batch 8   # frames per second of video on a GPU
      derain bench --size 6000x4000 --repeat 1 --no-reference --json
    """
    load_derainer(**model)  # fail early, with a one-line error, on unusable settings
    if onnx:
        if batch > 1:
            raise BadSetup("onnxruntime is timed on one photo: leave out --batch or --onnx")
        try:
            require("onnxruntime")
        except ImportError as exc:
            raise BadSetup(str(exc)) from None
    report = benchmark(**model, size=size, repeat=repeat, reference=reference, onnx=onnx, batch=batch)
    if as_json:
        click.echo(report_json(report.to_dict()))
        return
    title = f"derain bench — {report.width}×{report.height}, {report.steps} steps, {report.threads} threads"
    table = Table(title=title)
    for column in ("run", "device", "precision", "tile", "s", "s/MP", "MP/s", "GFLOP/s", "peak MB"):
        table.add_column(column)
    for r in report.rows:
        table.add_row(
            r.name,
            r.device,
            r.precision,
            r.tile,
            f"{r.seconds:.2f}",
            f"{r.seconds_per_mp:.2f}",
            f"{r.mp_per_second:.3f}",
            f"{r.gflops:.0f}",
            f"{r.peak_memory_mb:.0f}",
        )
    out = make_console()
    out.print(table)
    if report.compiled:
        out.print(f"the first call, compiling, took {report.rows[0].first_call_seconds:.1f} s")
    if report.speedup is not None:
        out.print(f"speed-up {report.speedup:.2f}× over fp32, outputs {report.psnr_default_vs_fp32:.1f} dB apart")
    if report.onnx_speedup is not None:
        out.print(
            f"onnxruntime takes {report.onnx_speedup:.2f}× the default's time, "
            f"outputs {report.psnr_onnx_vs_default:.1f} dB apart"
        )
    peaks = ", ".join(f"{shape} {gflops:.0f}" for shape, gflops in report.conv_peaks_gflops.items())
    out.print(
        f"{report.flops_per_mp / 1e9:.1f} GFLOP per megapixel; default run at {report.rows[0].gflops:.0f} GFLOP/s = "
        f"{report.peak_fraction:.0%} of the conv peak measured now ({peaks} GFLOP/s)"
    )
