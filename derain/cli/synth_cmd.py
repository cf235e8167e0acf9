"""derain synth: render training triples."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import cv2
import numpy as np
from rich.markup import escape
from rich.progress import Progress

from ..imageio import read_image, write_atomic
from ..synth import (
    MAX_PIXELS,
    MAX_SIDE,
    RENDERER_VERSION,
    VAL_FRACTION,
    RenderConfig,
    blind_test,
    check_size,
    contact_sheet,
    list_photos,
    render_samples,
    synthesize_dataset,
    triple_files,
)
from ..visualize import to_uint8
from .common import InputFailed, console, friendly, plural


def parse_size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not WIDTHxHEIGHT, e.g. 720x480") from None
    if w < 16 or h < 16:
        raise click.BadParameter("both sides must be at least 16 pixels")
    return w, h


def parse_render_size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    """:func:`parse_size` within what the renderer can hold, refused before any photo is read."""
    size = parse_size(ctx, param, value)
    try:
        check_size(size)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return size


def render_size_option(default: str, what: str) -> Callable[[Callable], Callable]:
    """--size of what the renderer draws, within what it can hold."""
    limit = f"at most {MAX_SIDE} px a side and {MAX_PIXELS / 1e6:.1f} MP: the renderer holds some 0.3 kB a pixel"
    return click.option(
        "--size",
        default=default,
        show_default=True,
        callback=parse_render_size,
        help=f"WIDTHxHEIGHT of {what} ({limit}).",
    )


def refuse_an_old_render(output: Path, count: int, noun: str, overwrite: bool) -> None:
    """Refuse a folder that holds ``count`` renders already, unless ``overwrite``: a smaller render
    over them would leave the rest mixed in with the new ones."""
    if count and not overwrite:
        raise InputFailed(
            f"{output}: already holds {plural(count, noun)}: add --overwrite to replace them, or name another folder"
        )


split_option = click.option(
    "--split",
    default="all",
    show_default=True,
    type=click.Choice(["all", "train", "val"]),
    help="Use only the photos of a stable 90/10 split by file name (keep validation photos unseen).",
)


def photos_to_render(clean_dir: Path, split: str) -> list[Path]:
    """The photos under ``clean_dir`` on one side of the split; none is a one-line error saying why."""
    if not clean_dir.is_dir():
        raise InputFailed(f"{clean_dir}: no photos found: the folder does not exist")
    photos = list_photos(clean_dir, split)
    if photos:
        return photos
    found = len(list_photos(clean_dir))
    if not found:
        raise InputFailed(f"{clean_dir}: no photos found")
    share = VAL_FRACTION if split == "val" else 1 - VAL_FRACTION
    which = "its only photo is not" if found == 1 else f"none of its {found} photos is"
    raise InputFailed(
        f"{clean_dir}: {which} in the {split} split (about {share:.0%} of photos, chosen by file name): "
        "add photos, or use --split all"
    )


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
@render_size_option("720x480", "each triple")
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
    "--beside",
    type=click.Path(path_type=Path, file_okay=False),
    help="With --preview: shuffle up to N real rainy photos from this folder into the sheet (cropped to "
    "--size) and write which tile is which to SHEET.key.txt: a blind test of the renderer.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a dataset already in OUTPUT, removing its triples first. Without it such a folder is refused: "
    "a smaller render would leave the rest of the old one mixed into the training set.",
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
    beside: Path | None,
    overwrite: bool,
    settings: tuple[str, ...],
) -> None:
    """Render raindrops onto clean photos: (rainy, clean, mask) triples in the Raindrop layout.

    Writes OUT/data/<i>_rain.png, OUT/gt/<i>_clean.png and OUT/mask/<i>_mask.png (0/255).
    Drops are traced through water on a glass plane in front of a random camera and defocused
    as its focus implies (see derain.synth.RenderConfig for every parameter).

    \b
    Example:
      derain synth photos/ -o data/train --count 1400 --split train
      derain synth photos/ -o data/val --count 48 --split val --seed 1000
      derain synth photos/ -o renders.png --preview 16 --set night_prob=1
      derain synth photos/ -o blind.jpg --preview 8 --beside my_rainy_photos/
    """
    try:
        cfg = RenderConfig().with_settings(settings)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--set'") from None
    if beside and not preview:
        raise click.BadParameter("real photos go beside a --preview sheet: add --preview N", param_hint="'--beside'")
    photos = photos_to_render(clean_dir, split)
    if preview:
        _write_preview(photos, output, preview, size, seed, cfg, beside)
        return
    try:  # now, so that a file in the way is one clear line rather than an OS error mid-render
        output.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputFailed(
            f"{output}: is a file; name a folder for the dataset (or add --preview N for a sheet)"
        ) from None
    except OSError as exc:
        raise InputFailed(f"{output}: cannot create the dataset folder ({exc.strerror})") from None
    old = triple_files(output)
    replaced = len({p.stem.partition("_")[0] for p in old})
    refuse_an_old_render(output, replaced, "triple", overwrite)
    for path in old:
        path.unlink()
    with Progress(console=console) as progress:
        task = progress.add_task(f"Rendering (renderer v{RENDERER_VERSION})", total=count)
        synthesize_dataset(photos, output, count, size, seed, cfg, on_sample=lambda i: progress.advance(task))
    done = f"{plural(count, 'triple')} from {plural(len(photos), 'photo')} in {escape(str(output))}"
    console.print(f"[green]✓[/] {done}" + (f" (replacing {plural(replaced, 'older triple')})" if replaced else ""))


def _write_preview(
    photos: list[Path],
    output: Path,
    count: int,
    size: tuple[int, int],
    seed: int,
    cfg: RenderConfig,
    beside: Path | None,
) -> None:
    if output.suffix.lower() not in {".png", ".jpg", ".jpeg"}:
        raise click.BadParameter(f"'{output}': a contact sheet is written as .png or .jpg", param_hint="'-o'")
    if output.is_dir():
        raise InputFailed(f"{output} is a folder: name the sheet's file, e.g. {output / 'renders.png'}")
    tiles = [sample[0] for sample in render_samples(photos, count, size, seed, cfg)]
    key = None
    if beside is not None:
        real = _real_photos(beside, count, seed)
        tiles, names = blind_test(tiles, real, size, seed)
        key = output.with_name(f"{output.name}.key.txt")
    sheet = contact_sheet(tiles, columns=min(4, len(tiles)))
    encoded, data = cv2.imencode(output.suffix, sheet[..., ::-1])
    if not encoded:
        raise InputFailed(f"{output}: cannot encode the sheet")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, data.tobytes())
    if key is None:
        console.print(f"[green]✓[/] {plural(count, 'render')} (renderer v{RENDERER_VERSION}) in {escape(str(output))}")
        return
    lines = [f"{k + 1}: {name}" for k, name in enumerate(names)]
    write_atomic(key, (f"tiles row by row; renderer v{RENDERER_VERSION}\n" + "\n".join(lines) + "\n").encode())
    console.print(
        f"[green]✓[/] {plural(count, 'render')} and {plural(len(real), 'real photo')}, shuffled, in "
        f"{escape(str(output))} (which is which: {escape(str(key))})"
    )


def _real_photos(folder: Path, count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Up to ``count`` photos from ``folder`` (a seeded choice), RGB uint8 with their file names."""
    found = list_photos(folder) if folder.is_dir() else []
    if not found:
        raise InputFailed(f"{folder}: no photos found to put beside the renders")
    chosen = np.random.default_rng(seed).permutation(len(found))[:count]
    return [(found[k].name, to_uint8(read_image(found[k]).rgb)) for k in sorted(chosen)]
