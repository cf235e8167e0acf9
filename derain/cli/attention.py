"""derain attention: where the model found raindrops."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from rich.markup import escape

from ..files import attention_files
from ..imageio import ImageError
from .common import InputFailed, OnePhotoCommand, console, friendly, limit_option, load_derainer, model_options


@click.command(cls=OnePhotoCommand)
@click.argument("input_path", metavar="IN", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the maps.  [default: IN's folder]",
)
@model_options
@limit_option
@friendly
def attention(input_path: Path, output_dir: Path | None, max_pixels: int | None, **model: str) -> None:
    """Write the learned raindrop attention maps of a photo.

    Writes <stem>_att1.png … <stem>_attN.png (8-bit, white = raindrop, one per recurrent
    step, the last is the most refined) and <stem>_overlay.png, a heat map of the last map
    over the photo.

    \b
    Example:
      derain attention rainy.jpg -o maps/
    """
    if input_path.is_dir():
        hint = f"derain batch {shlex.quote(str(input_path))} --attention"
        raise InputFailed(f"{input_path}: is a folder; for an overlay of every image in it use `{hint}`")
    if not input_path.is_file():
        raise InputFailed(f"{input_path}: no such file")
    out_dir = output_dir or input_path.parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFailed(f"{out_dir}: cannot create this folder ({exc.strerror})") from None
    derainer = load_derainer(**model)
    try:
        with console.status(f"Finding raindrops in {input_path.name}…"):
            paths = attention_files(derainer, input_path, out_dir, max_pixels)
    except ImageError as exc:
        raise InputFailed(str(exc)) from None
    console.print(f"[green]✓[/] {len(paths.maps)} maps and {escape(str(paths.overlay))}", soft_wrap=True)
