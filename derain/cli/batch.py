"""derain batch: a whole folder tree, resumable, one bad file never stops it."""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..engine import Derainer
from ..files import find_images, overlay_path_for, same_file, write_outputs
from ..imageio import IMAGE_EXTENSIONS, Image, read_image
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    InputFailed,
    console,
    friendly,
    load_derainer,
    metadata_option,
    model_options,
    one_line,
    with_ext,
    write_options,
)


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    interrupted: bool = False

    def report(self) -> None:
        state = "[yellow]interrupted[/]: " if self.interrupted else ""
        colour = "red" if self.failed else "green"
        console.print(f"{state}[{colour}]{self.done} done, {self.skipped} skipped, {len(self.failed)} failed[/]")
        for path, reason in self.failed:
            console.print(f"  [red]✗[/] {escape(str(path))}: {escape(reason)}", soft_wrap=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[file]}"),
        console=console,
    )


def _run(
    derainer: Derainer,
    jobs: list[tuple[Path, Path]],
    quality: int,
    max_pixels: int | None,
    summary: Summary,
    overlays: bool = False,
    keep_metadata: bool = True,
) -> None:
    """Derain each job; the next file is decoded and the last one encoded while the model runs."""
    writes: list[tuple[Path, Future]] = []
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer, _progress() as progress:
        task = progress.add_task("Deraining", total=len(jobs), file="")
        reads = [reader.submit(read_image, jobs[0][0], max_pixels)] if jobs else []
        try:
            for i, (src, dst) in enumerate(jobs):
                progress.update(task, file=str(src.name))
                if i + 1 < len(jobs):
                    reads.append(reader.submit(read_image, jobs[i + 1][0], max_pixels))
                try:
                    image: Image = reads[i].result()
                    result = derainer.run(image.rgb, with_attention=overlays)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    overlay = overlay_path_for(dst) if overlays else None
                    write = writer.submit(write_outputs, image, result, dst, quality, overlay, keep_metadata)
                    writes.append((src, write))
                except Exception as exc:  # one bad file never stops the batch
                    summary.failed.append((src, one_line(exc)))
                reads[i] = None  # free the decoded image
                progress.advance(task)
        except KeyboardInterrupt:
            summary.interrupted = True
            for future in reads:
                if future is not None:
                    future.cancel()
        for src, future in writes:  # in-flight writes finish (they are atomic either way)
            try:
                future.result()
                summary.done += 1
            except Exception as exc:
                summary.failed.append((src, one_line(exc)))


@click.command()
@click.argument("input_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Mirror of DIR with the cleaned images.  [default: DIR_derained beside DIR]",
)
@click.option("--overwrite", is_flag=True, help="Redo images whose output already exists (default: skip them).")
@click.option(
    "--attention",
    "with_overlay",
    is_flag=True,
    help="Also write <name>_overlay.png beside each output: where the model found raindrops.",
)
@model_options
@write_options
@metadata_option
@friendly
def batch(
    input_dir: Path,
    output_dir: Path | None,
    overwrite: bool,
    with_overlay: bool,
    strip_metadata: bool,
    ext: str | None,
    quality: int,
    max_pixels: int | None,
    **model: str,
) -> None:
    """Remove raindrops from every image under DIR, recursively.

    The output folder mirrors DIR: same sub-folders and file names. Outputs that already
    exist are skipped, so an interrupted batch resumes where it stopped. A file that cannot
    be read or written is reported and skipped; the exit code is 1 if any failed. Outputs
    keep each photo's colour profile, EXIF, XMP and DPI (--strip-metadata drops them).

    \b
    Examples:
      derain batch dashcam/                   # writes dashcam_derained/…
      derain batch photos/ -o clean/ --ext png --overwrite
      derain batch dashcam/ --attention       # also dashcam_derained/…/<name>_overlay.png
    """
    if not input_dir.is_dir():
        raise InputFailed(f"{input_dir}: no such folder")
    out_dir = output_dir or input_dir.resolve().with_name(input_dir.resolve().name + "_derained")  # also for . and ..
    if same_file(input_dir, out_dir):
        raise InputFailed(
            f"{out_dir}: the output folder must differ from the input folder (inputs are never overwritten)"
        )
    sources = list(find_images(input_dir, exclude=out_dir))
    if not sources:
        looked_for = ", ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
        raise InputFailed(f"{input_dir}: no images found (looked for {looked_for})")
    summary = Summary()
    jobs, claimed = [], {}
    for src in sources:
        dst = with_ext(out_dir / src.relative_to(input_dir), ext)
        outputs = [dst, overlay_path_for(dst)] if with_overlay else [dst]
        taken = next((out for out in outputs if out in claimed), None)
        if taken is not None:  # e.g. a.jpg and a.png with --ext png
            summary.failed.append((src, f"its output {taken.name} is already taken by {claimed[taken].name}"))
        elif all(out.exists() for out in outputs) and not overwrite:
            summary.skipped += 1
        else:
            jobs.append((src, dst))
        for out in outputs:
            claimed.setdefault(out, src)
    if jobs:
        derainer = load_derainer(**model)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputFailed(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
        _run(derainer, jobs, quality, max_pixels, summary, with_overlay, keep_metadata=not strip_metadata)
    summary.report()
    if summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if summary.failed:
        sys.exit(EXIT_FAILED)
