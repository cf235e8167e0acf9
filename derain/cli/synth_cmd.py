"""derain synth: render training triples."""

from __future__ import annotations

from pathlib import Path

import click
import cv2
from rich.markup import escape
from rich.progress import Progress

from ..synth import RENDERER_VERSION, RenderConfig, contact_sheet, list_photos, render_samples, synthesize_dataset
from .common import InputFailed, console, friendly


def parse_size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not WIDTHxHEIGHT, e.g. 720x480") from None
    if w < 16 or h < 16:
        raise click.BadParameter("both sides must be at least 16 pixels")
    return w, h


split_option = click.option(
    "--split",
    default="all",
    show_default=True,
    type=click.Choice(["all", "train", "val"]),
    help="Use only the photos of a stable 90/10 split by file name (keep validation photos unseen).",
)


def photos_to_render(clean_dir: Path, split: str) -> list[Path]:
    """The photos under ``clean_dir`` on one side of the split; none is a one-line error."""
    photos = list_photos(clean_dir, split) if clean_dir.is_dir() else []
    if not photos:
        raise InputFailed(f"{clean_dir}: no photos found (split '{split}')")
    return photos


@click.command("synth")
@click.argument("clean_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Dataset folder to create (data/, gt/, mask/), or the sheet's file with --preview.",
)
@click.option("--count", "-n", default=1000, show_default=True, type=click.IntRange(min=1), help="Triples to render.")
@click.option("--size", default="720x480", show_default=True, callback=parse_size, help="WIDTHxHEIGHT of each triple.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same photos: byte-identical files.")
@split_option
@click.option(
    "--preview",
    default=None,
    type=click.IntRange(min=1),
    metavar="N",
    help="Instead of a dataset, write a contact sheet of N rainy renders to OUTPUT (a .png/.jpg file): "
    "look at it beside real rainy photos before training on a renderer change.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="Change a RenderConfig parameter (repeatable): a number, or LOW,HIGH for a range. "
    "E.g. --set night_prob=0.5 --set drop_focus_prob=0.5 for a set rich in night and drop-focused shots.",
)
@friendly
def synth_cmd(
    clean_dir: Path,
    output: Path,
    count: int,
    size: tuple[int, int],
    seed: int,
    split: str,
    preview: int | None,
    settings: tuple[str, ...],
) -> None:
    """Render raindrops onto clean photos: (rainy, clean, mask) triples in the Raindrop layout.

    Writes OUT/data/<i>_rain.png, OUT/gt/<i>_clean.png and OUT/mask/<i>_mask.png (0/255).
    Drops are traced through water on a glass plane in front of a random camera and defocused
    as its focus implies (see derain.synth.RenderConfig for every parameter).

    \b
    Example:
      derain synth photos/ -o data/train --count 1400 --split train
      derain synth photos/ -o data/val --count 50 --split val --seed 1000
      derain synth photos/ -o renders.png --preview 16 --set night_prob=1
    """
    try:
        cfg = RenderConfig().with_settings(settings)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--set'") from None
    photos = photos_to_render(clean_dir, split)
    if preview:
        _write_preview(photos, output, preview, size, seed, cfg)
        return
    with Progress(console=console) as progress:
        task = progress.add_task(f"Rendering (renderer v{RENDERER_VERSION})", total=count)
        synthesize_dataset(photos, output, count, size, seed, cfg, on_sample=lambda i: progress.advance(task))
    console.print(f"[green]✓[/] {count} triples from {len(photos)} photos in {escape(str(output))}")


def _write_preview(
    photos: list[Path], output: Path, count: int, size: tuple[int, int], seed: int, cfg: RenderConfig
) -> None:
    if output.suffix.lower() not in {".png", ".jpg", ".jpeg"}:
        raise click.BadParameter(f"'{output}': a contact sheet is written as .png or .jpg", param_hint="'-o'")
    if output.is_dir():
        raise InputFailed(f"{output} is a folder: name the sheet's file, e.g. {output / 'renders.png'}")
    rainy = [sample[0] for sample in render_samples(photos, count, size, seed, cfg)]
    sheet = contact_sheet(rainy, columns=min(4, count))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp{output.suffix}")
    if not cv2.imwrite(str(tmp), sheet[..., ::-1]):
        raise InputFailed(f"{output}: cannot write the sheet")
    tmp.replace(output)
    console.print(f"[green]✓[/] {count} renders (renderer v{RENDERER_VERSION}) in {escape(str(output))}")
