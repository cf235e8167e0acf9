"""derain bench: how fast, how much memory."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from ..benchmark import benchmark
from .common import friendly, load_derainer, model_options
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
@model_options
@friendly
def bench_cmd(size: tuple[int, int], repeat: int, as_json: bool, reference: bool, **model) -> None:
    """Time the chosen settings against plain fp32 (no tiling) on a synthetic photo.

    Reports seconds, seconds per megapixel, megapixels per second and peak memory for both,
    the speed-up, how far apart the two outputs are (PSNR), and the model's FLOPs per
    megapixel, to compare with the hardware's peak.

    \b
    Examples:
      derain bench                            # 720×480, auto device and precision
      derain bench --size 6000x4000 --repeat 1 --no-reference --json
    """
    load_derainer(**model)  # fail early, with a one-line error, on unusable settings
    report = benchmark(**model, size=size, repeat=repeat, reference=reference)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    table = Table(title=f"derain bench — {report.width}×{report.height}, {report.threads} threads")
    for column in ("run", "device", "precision", "tile", "s", "s/MP", "MP/s", "peak MB"):
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
            f"{r.peak_memory_mb:.0f}",
        )
    out = Console()
    out.print(table)
    if report.speedup is not None:
        out.print(f"speed-up {report.speedup:.2f}× over fp32, outputs {report.psnr_default_vs_fp32:.1f} dB apart")
    out.print(f"{report.flops_per_mp / 1e9:.1f} GFLOP per megapixel")
