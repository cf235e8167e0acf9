"""derain eval: the paper's protocol."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from ..evaluate import ImageScore, evaluate
from .common import InputFailed, console, friendly, load_derainer, model_options


@click.command("eval")
@click.argument("root", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--pred",
    "pred_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Score these derained images (named <i>.* or <i>_*.*) instead of running the model.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help='Also write {"mean_psnr", "mean_ssim", "images": [{"name", "psnr", "ssim"}, …]}.',
)
@model_options
@friendly
def eval_cmd(root: Path, pred_dir: Path | None, json_path: Path | None, **model: str) -> None:
    """Score deraining on pairs in the Raindrop layout with the paper's protocol.

    Images are cropped to multiples of 4; PSNR and SSIM (7×7 window) are computed on the Y
    channel of OpenCV's YCrCb and averaged over images. The input's own scores (doing
    nothing) are reported as the baseline.

    \b
    Examples:
      derain eval test_a/                     # run the shipped model on test_a/data
      derain eval test_a/ --pred results/ --json scores.json
    """
    if not root.is_dir():
        raise InputFailed(f"{root}: no such folder")
    derainer = None if pred_dir else load_derainer(**model)
    table = Table("image", "PSNR", "SSIM", "input PSNR", "input SSIM")

    def add(score: ImageScore) -> None:
        table.add_row(
            score.name, f"{score.psnr:.2f}", f"{score.ssim:.4f}", f"{score.input_psnr:.2f}", f"{score.input_ssim:.4f}"
        )

    with console.status("Scoring…"):
        report = evaluate(root, derainer, pred_dir, on_image=add)
    table.add_section()
    table.add_row(
        "[bold]mean",
        f"[bold]{report.mean_psnr:.2f}",
        f"[bold]{report.mean_ssim:.4f}",
        f"{report.input_mean_psnr:.2f}",
        f"{report.input_mean_ssim:.4f}",
    )
    console.print(table)
    gain = report.mean_psnr - report.input_mean_psnr
    console.print(
        f"{len(report.scored)} of {len(report.images)} images averaged: PSNR {report.mean_psnr:.2f} dB "
        f"({gain:+.2f} dB over the input), "
        f"SSIM {report.mean_ssim:.4f}"
    )
    if json_path:
        json_path.write_text(json.dumps(report.to_dict(), indent=2))
