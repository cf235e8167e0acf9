"""derain clean: one photo."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..files import clean_file
from ..imageio import ImageError, output_path_for
from .common import InputFailed, console, friendly, load_derainer, model_options, with_ext, write_options


@click.command()
@click.argument("input_path", metavar="IN", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write.  [default: IN's folder, <stem><suffix>.<ext>]",
)
@click.option("--suffix", default="_derained", show_default=True, help="Added to the name when -o is not given.")
@click.option(
    "--attention",
    "with_overlay",
    is_flag=True,
    help="Also write <output stem>_overlay.png: where the model found raindrops.",
)
@model_options
@write_options
@friendly
def clean(
    input_path: Path,
    output: Path | None,
    suffix: str,
    with_overlay: bool,
    ext: str | None,
    quality: int,
    max_pixels: int | None,
    **model: str,
) -> None:
    """Remove raindrops from one photo.

    \b
    Examples:
      derain clean rainy.jpg                  # writes rainy_derained.jpg
      derain clean rainy.jpg -o clean.png --attention
      derain clean huge.tif --tile 512 --device cpu
    """
    if not input_path.is_file():
        raise InputFailed(f"{input_path}: no such file")
    dst = with_ext(output, ext) if output else output_path_for(input_path, suffix, ext)
    overlay = dst.with_name(dst.stem + "_overlay.png") if with_overlay else None
    derainer = load_derainer(**model)
    try:
        with console.status(f"Cleaning {input_path.name}…"):
            clean_file(derainer, input_path, dst, quality, max_pixels, overlay)
    except ImageError as exc:
        raise InputFailed(str(exc)) from None
    console.print(
        f"[green]✓[/] {escape(str(dst))}" + (f"  (overlay: {escape(str(overlay))})" if overlay else ""), soft_wrap=True
    )
