"""derain clean: one photo."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from rich.markup import escape

from ..files import clean_file, overlay_path_for
from ..imageio import IMAGE_EXTENSIONS, ImageError, is_image_path, output_path_for
from .common import (
    BadSetup,
    InputFailed,
    OnePhotoCommand,
    console,
    friendly,
    load_derainer,
    make_parent,
    metadata_option,
    model_options,
    with_ext,
    write_options,
)


@click.command(cls=OnePhotoCommand)
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
@metadata_option
@friendly
def clean(
    input_path: Path,
    output: Path | None,
    suffix: str,
    with_overlay: bool,
    ext: str | None,
    quality: int,
    max_pixels: int | None,
    strip_metadata: bool,
    **model: str,
) -> None:
    """Remove raindrops from one photo.

    The output keeps the photo's colour profile, EXIF (camera, date, GPS; orientation reset,
    as the pixels are written upright), XMP and DPI where its format can hold them.

    \b
    Examples:
      derain clean rainy.jpg                  # writes rainy_derained.jpg
      derain clean IMG_0042.HEIC --ext jpg    # iPhone photo to JPEG, metadata kept
      derain clean rainy.jpg -o clean.png --attention
      derain clean window.jpg --focus glass   # the camera focused on the drops
      derain clean street.jpg --bokeh         # at night: drops lit as bright discs
      derain clean huge.tif --tile 512 --device cpu
    """
    if input_path.is_dir():
        hint = f"derain batch {shlex.quote(str(input_path))}"
        raise InputFailed(f"{input_path}: is a folder; to clean every image in it use `{hint}`")
    if not input_path.is_file():
        raise InputFailed(f"{input_path}: no such file")
    dst = _output_path(input_path, output, suffix, ext)
    overlay = overlay_path_for(dst) if with_overlay else None
    make_parent(dst)  # as `batch`, `attention` and `video` make theirs
    derainer = load_derainer(**model)
    try:
        with console.status(f"Cleaning {input_path.name}…"):
            clean_file(derainer, input_path, dst, quality, max_pixels, overlay, keep_metadata=not strip_metadata)
    except ImageError as exc:
        raise InputFailed(str(exc)) from None
    console.print(
        f"[green]✓[/] {escape(str(dst))}" + (f"  (overlay: {escape(str(overlay))})" if overlay else ""), soft_wrap=True
    )


def _output_path(src: Path, output: Path | None, suffix: str, ext: str | None) -> Path:
    """Where to write, checked before the model loads: a slip in the name should not cost a photo's run."""
    if output is None:
        if "/" in suffix or "\\" in suffix:
            raise BadSetup(f"--suffix {suffix!r}: a name ending without folders (use -o to write elsewhere)")
        return output_path_for(src, suffix, ext)
    dst = with_ext(output, ext)
    if not is_image_path(dst):
        supported = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise BadSetup(f"-o {output}: name the image file to write, ending in one of {supported}")
    return dst
