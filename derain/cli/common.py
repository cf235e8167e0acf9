"""What every command shares: model and output options, exit codes, one-line errors."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console

from ..engine import DEFAULT_OVERLAP, FOCUS, MAX_STEPS, MIN_WORKING_SIZE, WORKING_SIZE, Derainer
from ..imageio import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from ..weights import WeightsError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

PIPE_WIDTH = 160
"""Columns for output to a file or a pipe, where rich would assume 80 and cut tables' cells short."""


def make_console(stderr: bool = False) -> Console:
    """A rich console, as wide as the terminal, or :data:`PIPE_WIDTH` where there is none (``COLUMNS`` rules)."""
    made = Console(stderr=stderr, highlight=False)
    if not made.is_terminal and "COLUMNS" not in os.environ:
        made.width = PIPE_WIDTH
    return made


console = make_console(stderr=True)


class InputFailed(click.ClickException):
    """An input could not be processed (exit 1)."""

    exit_code = EXIT_FAILED


class OnePhotoCommand(click.Command):
    """A command of one photo that, given several (a shell glob), says which command takes many."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if "unexpected extra argument" in exc.message:
                exc.message += f"; {ctx.info_name} takes one photo: for many, use `derain batch` on their folder"
            raise


class BadSetup(click.ClickException):
    """The command line names something unusable: weights, device, precision (exit 2)."""

    exit_code = EXIT_USAGE


def model_options(command: Callable) -> Callable:
    """:func:`network_options`, --working-size, --dense-pass, --focus and --bokeh: what commands that clean
    photos take."""
    command = click.option(
        "--bokeh",
        is_flag=True,
        help="For night shots with the scene in focus: drops lit by lamps show as bright discs all of one size "
        "(bokeh), which the network leaves; fill them in from around them. Lamps stay; a bright round thing of "
        "the discs' size (a lit round sign) is filled in too, so use it on such photos only.",
    )(command)
    command = click.option(
        "--focus",
        default=FOCUS[0],
        show_default=True,
        type=click.Choice(FOCUS),
        help="Where the camera focused. glass: on the drops (a phone against a wet window, a dash-cam that shows "
        "its windscreen's drops sharp), which come out dark-rimmed over a blurred scene; the drops the network leaves "
        "are replaced by the out-of-focus scene around them, which also softens scene detail finer than a drop. "
        "scene: the network alone.",
    )(command)
    command = click.option(
        "--dense-pass/--no-dense-pass",
        default=None,
        help="Where the attention map finds drops crowded together (drizzle over a car, a fine spray "
        "on the glass), derain that region again at twice the size, where the network sees such small drops "
        "at the size it learned them; isolated bright spots are left alone. Photos without dense drops "
        "cost nothing more, a photo covered in them up to 6× the time.  "
        "[default: with the gate: on for the shipped weights, off for gen.pkl]",
    )(command)
    return network_options(
        click.option(
            "--working-size",
            default=str(WORKING_SIZE),
            show_default=True,
            callback=_parse_working_size,
            metavar="N|full",
            help="Derain a photo whose short side is larger at this short side, and scale the change (only) back "
            "up onto the full-size photo: the weights learned drops at the size they have in 720×480 frames, and "
            "a phone's 12 MP photo shows them six times larger, too large to repaint. full: the network sees "
            "the photo at its own size (slower; large drops stay).",
        )(command)
    )


def network_options(command: Callable) -> Callable:
    """--weights, --device, --precision, --tile, --tile-overlap, --steps, --gate, --compile."""
    options = [
        click.option(
            "--weights",
            "-w",
            default=None,
            metavar="NAME|PATH",
            help="Shipped weights by name (see `derain weights`), or a file: ours, a training "
            "checkpoint, or the official gen.pkl.  [default: shipped default]",
        ),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            metavar="auto|cpu|cuda[:N]|mps",
            help="Where to run; auto picks CUDA, then MPS, then CPU.",
        ),
        click.option(
            "--precision",
            default="auto",
            show_default=True,
            type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
            help="auto: fp16 on GPU, bf16 on CPUs with native support, else fp32.",
        ),
        click.option(
            "--tile",
            default="auto",
            show_default=True,
            metavar="auto|N|0",
            help="Tile edge in pixels for large photos; auto bounds memory, 0 disables tiling.",
        ),
        click.option(
            "--tile-overlap",
            default=DEFAULT_OVERLAP,
            show_default=True,
            type=click.IntRange(min=0),
            help="Pixels shared by neighbouring tiles (blended without seams); at most half a tile is used.",
        ),
        click.option(
            "--steps",
            default=None,
            type=click.IntRange(1, MAX_STEPS),
            metavar="N",
            help="Attentive-recurrent steps: fewer is faster, at some cost in drops found (see the README).  "
            "[default: the weights' own]",
        ),
        click.option(
            "--gate/--no-gate",
            default=None,
            help="Take the network's output only where its attention map found drops (blurred to cover "
            "their soft edges) and keep the input elsewhere, and on lamps in night shots, which the network "
            "would paint over; "
            "--no-gate: the raw output everywhere.  "
            "[default: as the weights were validated: on for the shipped ones, off for gen.pkl]",
        ),
        click.option(
            "--compile",
            is_flag=True,
            help="On a CUDA GPU, compile the model (torch.compile, needs Triton): about 1.3-1.6x the frames per "
            "second for video and large batches, after 20-30 s of compiling at the start. Not worth it for one photo.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def write_options(command: Callable) -> Callable:
    """--quality, --ext and --max-pixels."""
    options = [
        click.option(
            "--quality",
            "-q",
            default=95,
            show_default=True,
            type=click.IntRange(1, 100),
            help="JPEG/WebP/HEIC/AVIF quality of written images.",
        ),
        click.option(
            "--ext",
            default=None,
            type=click.Choice(sorted(e[1:] for e in IMAGE_EXTENSIONS), case_sensitive=False),
            help="Force the output format.  [default: same as input]",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return limit_option(command)


def limit_option(command: Callable) -> Callable:
    """--max-pixels: the decompression-bomb guard."""
    return click.option(
        "--max-pixels",
        default=str(DEFAULT_MAX_PIXELS // 1_000_000) + "M",
        show_default=True,
        callback=_parse_pixels,
        metavar="N|NM|0",
        help="Refuse images larger than this (checked before decoding); 0 = no limit.",
    )(command)


def metadata_option(command: Callable) -> Callable:
    """--strip-metadata: outputs keep the colour profile, EXIF, XMP and DPI unless asked not to."""
    return click.option(
        "--strip-metadata",
        is_flag=True,
        help="Write no colour profile, EXIF (camera, date, GPS), XMP or DPI.  [default: keep them]",
    )(command)


def _parse_working_size(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value.strip().lower() == "full":
        return None
    try:
        size = int(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a size in pixels or 'full'") from None
    if size < MIN_WORKING_SIZE:
        raise click.BadParameter(f"must be at least {MIN_WORKING_SIZE} pixels, or 'full'")
    return size


def _parse_pixels(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    text = value.strip().upper().removesuffix("P")
    factor = 1_000_000 if text.endswith("M") else 1
    try:
        pixels = int(float(text.removesuffix("M")) * factor)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a pixel count like 200M or 50000000") from None
    if pixels < 0:
        raise click.BadParameter("must be ≥ 0")
    return pixels or None


def load_derainer(weights: str | None, **settings: object) -> Derainer:
    """Build the engine from :func:`model_options`' values (named as ``Derainer``'s arguments),
    turning any setup problem into a one-line error with exit code 2."""
    try:
        with console.status("Loading model…"):
            return Derainer(weights, **settings)
    except (WeightsError, ValueError, TypeError) as exc:
        raise BadSetup(str(exc)) from None


def make_parent(dst: Path) -> None:
    """Create the folder an output goes in (``-o new/folder/out.jpg``), or fail in one line."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFailed(f"{dst}: cannot create its folder {dst.parent} ({exc.strerror})") from None


def check_writable(path: Path) -> None:
    """Fail in one line before a long run, not after it, where the file ``path`` cannot be written."""
    make_parent(path)
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise InputFailed(f"{path}: cannot write in {path.parent} ({exc.strerror or exc})") from None


def with_ext(path: Path, ext: str | None) -> Path:
    return path.with_suffix("." + ext.lower()) if ext else path


def plural(count: int, noun: str) -> str:
    """``1 frame``, ``2 frames``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def one_line(exc: BaseException) -> str:
    """A short reason for a failure, without a traceback."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def friendly(command: Callable) -> Callable:
    """Unexpected operating-system errors become a one-line message instead of a traceback; Ctrl-C exits 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (OSError, ValueError) as exc:
            raise InputFailed(one_line(exc)) from None
        except KeyboardInterrupt:  # click would report it as "Aborted!" with exit code 1
            console.print("[yellow]interrupted[/]")
            sys.exit(EXIT_INTERRUPTED)

    return wrapper
