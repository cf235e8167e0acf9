"""derain eval: the paper's protocol."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..evaluate import ImageScore, evaluate, report_json
from ..imageio import write_atomic
from .common import InputFailed, check_writable, console, friendly, load_derainer, model_options
from .video_cmd import eval_video, window_option


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
    help='Also write {"mean_psnr", "mean_ssim", "attention_iou", "images": [{"name", "psnr", "ssim", …}, …]}.',
)
@click.option(
    "--video",
    is_flag=True,
    help="ROOT holds clips (as `derain synth-video` writes): score temporal fusion against per-frame, and flicker.",
)
@window_option
@model_options
@friendly
def eval_cmd(root: Path, pred_dir: Path | None, json_path: Path | None, video: bool, window: int, **model: str) -> None:
    """Score deraining on pairs in the Raindrop layout with the paper's protocol.

    Images are cropped to multiples of 4; PSNR and SSIM (7×7 window) are computed on the Y
    channel of OpenCV's YCrCb and averaged over images. The input's own scores (doing
    nothing) are reported as the baseline. When the model runs and ROOT has drop masks
    (mask/<i>_mask.png, as `derain synth` writes), the final attention map is scored too:
    IoU of attention ≥ 0.5 with the mask, pooled over all pixels.

    \b
    Examples:
      derain eval test_a/                     # run the shipped model on test_a/data
      derain eval test_a/ --pred results/ --json scores.json
      derain eval clips/ --video              # clips from `derain synth-video`
    """
    for folder in (root, pred_dir):
        if folder is not None and not folder.is_dir():
            raise InputFailed(f"{folder}: no such folder")
    if pred_dir and model["weights"] is not None:
        raise click.UsageError("--pred scores outputs already made; it takes no --weights")
    if json_path:  # before the long part, so a bad path fails at once
        check_writable(json_path)
    if video:
        if pred_dir:
            raise click.UsageError("--video runs the model; it does not take --pred")
        return eval_video(root, load_derainer(**model), window, json_path)
    derainer = None if pred_dir else load_derainer(**model)
    rows: list[list[str]] = []

    def add(s: ImageScore) -> None:
        rows.append([s.name, *_cells(s.psnr, s.ssim, s.input_psnr, s.input_ssim, s.attention_iou)])

    with console.status("Scoring…"):
        report = evaluate(root, derainer, pred_dir, on_image=add)
    iou = report.attention_iou
    table = Table("image", "PSNR", "SSIM", "input PSNR", "input SSIM", *(["attention IoU"] if iou is not None else []))
    for row in rows:
        table.add_row(*row)
    if report.scored:  # a set of drop-free photos only has no mean over the input to show
        table.add_section()
        means = _cells(report.mean_psnr, report.mean_ssim, report.input_mean_psnr, report.input_mean_ssim, iou)
        table.add_row("[bold]mean", *(f"[bold]{m}" for m in means))
    console.print(table)
    if report.scored:
        gain = report.mean_psnr - report.input_mean_psnr
        console.print(
            f"{len(report.scored)} of {len(report.images)} images averaged: PSNR {report.mean_psnr:.2f} dB "
            f"({gain:+.2f} dB over the input), SSIM {report.mean_ssim:.4f}"
            + ("" if iou is None else f", attention IoU {iou:.3f} (pooled over masked images)")
        )
    if report.drop_free_psnr:
        mean, worst = report.drop_free_psnr
        console.print(
            f"{len(report.drop_free)} drop-free image(s): output {mean:.2f} dB from the input (worst {worst:.2f} dB)"
        )
    if json_path:
        write_atomic(json_path, report_json(report.to_dict()).encode())


def _cells(psnr: float, ssim: float, input_psnr: float, input_ssim: float, iou: float | None) -> list[str]:
    """Table cells; the IoU column exists only when attention was scored."""
    cells = [f"{psnr:.2f}", f"{ssim:.4f}", f"{input_psnr:.2f}", f"{input_ssim:.4f}"]
    return cells + ([] if iou is None else [f"{iou:.3f}"])
