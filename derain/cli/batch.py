"""derain batch: a whole folder tree, resumable, one bad file never stops it."""

from __future__ import annotations

import shlex
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import click
from click.core import ParameterSource
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import distributed
from ..engine import Derainer
from ..files import overlay_path_for, write_outputs
from ..imageio import IMAGE_EXTENSIONS, Image, is_image_path, read_image
from ..stores import Store, is_uri
from ..video import VIDEO_EXTENSIONS, is_video_path, video_output_path
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    BadSetup,
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
        for path, reason in self.failed:  # a reader's reason already begins with the path: say it once
            console.print(
                f"  [red]✗[/] {escape(str(path))}: {escape(reason.removeprefix(f'{path}: '))}", soft_wrap=True
            )


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


def _make_folder(target: Store) -> None:
    """Create a local output folder up front (an object store needs none)."""
    if target.remote:
        return
    try:
        Path(target.root).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFailed(f"{target}: cannot create the output folder ({exc.strerror})") from None


def _require_ray() -> None:
    """A one-line hint (exit 2) where Ray is not installed."""
    try:
        distributed.require_ray()
    except ImportError as exc:
        raise BadSetup(str(exc)) from None


def _run_ray(
    jobs: list[tuple[PurePath, PurePath]],
    source: Store,
    target: Store,
    step: distributed.Step,
    address: str | None,
    workers: int | None,
    model: dict[str, str],
    summary: Summary,
) -> None:
    """The same jobs on Ray actors; files are named and failures listed as the local engine does."""
    weights = model.get("weights")
    if weights and Path(weights).exists():  # the actors run in other folders, maybe on other machines
        model = {**model, "weights": str(Path(weights).absolute())}
    native = [(source.native(src), target.native(dst)) for src, dst in jobs]
    failed: dict[int, str] = {}
    try:
        results = distributed.run(native, source, target, model, step, address, workers)
    except distributed.SetupFailed as exc:
        raise BadSetup(str(exc)) from None
    with _progress() as progress:
        task = progress.add_task("Deraining on Ray", total=len(jobs), file="")
        try:
            for i, reason in results:
                src, dst = jobs[i]
                if reason is None:
                    summary.done += 1
                else:
                    failed[i] = reason.replace(native[i][0], source.uri(src)).replace(native[i][1], target.uri(dst))
                progress.update(task, advance=1, file=src.name)
        except KeyboardInterrupt:
            summary.interrupted = True
        except distributed.SetupFailed as exc:
            raise BadSetup(str(exc)) from None
        finally:
            results.close()  # stops the Ray job (and a Ray started for it), clears its scratch folder
    summary.failed += [(jobs[i][0], failed[i]) for i in sorted(failed)]


@click.command()
@click.argument("input_dir", metavar="DIR")
@click.option(
    "-o",
    "--output-dir",
    metavar="OUTDIR",
    help="Mirror of DIR with the cleaned images.  [default: DIR_derained beside DIR]",
)
@click.option("--overwrite", is_flag=True, help="Redo images whose output already exists (default: skip them).")
@click.option(
    "--attention",
    "with_overlay",
    is_flag=True,
    help="Also write <name>_overlay.png beside each output: where the model found raindrops.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process. ray: actors on a Ray cluster (or a local Ray), which also reads s3://… folders.",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    metavar="ADDR",
    help="Ray cluster to join: auto (from a cluster node) or HEAD:6379.  [default: $RAY_ADDRESS, else a local Ray]",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    metavar="N",
    help="At most N Ray actors (each loads the model once).  [default: one per GPU, else one per node]",
)
@model_options
@write_options
@metadata_option
@friendly
def batch(
    input_dir: str,
    output_dir: str | None,
    overwrite: bool,
    with_overlay: bool,
    strip_metadata: bool,
    engine: str,
    ray_address: str | None,
    workers: int | None,
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
    Video files are skipped with a note: clean them with `derain video`.

    With --engine ray the same work runs on Ray actors: a local Ray on this machine, or the
    cluster at --ray-address; DIR and OUTDIR may then be object-store URIs (s3://bucket/prefix).

    \b
    Examples:
      derain batch dashcam/                   # writes dashcam_derained/…
      derain batch photos/ -o clean/ --ext png --overwrite
      derain batch dashcam/ --attention       # also dashcam_derained/…/<name>_overlay.png
      derain batch s3://fleet/frames -o s3://fleet/clean --engine ray --ray-address auto
    """
    if engine == "ray":
        _require_ray()
    elif is_uri(input_dir) or is_uri(output_dir):
        raise BadSetup("object-store folders (s3://…) need --engine ray")
    elif workers or click.get_current_context().get_parameter_source("ray_address") is ParameterSource.COMMANDLINE:
        raise BadSetup("--workers and --ray-address need --engine ray")
    source = Store.at(input_dir)
    target = Store.at(output_dir) if output_dir else source.sibling()
    if not source.is_dir():
        if not source.remote and Path(input_dir).is_file():
            command = "video" if is_video_path(Path(input_dir)) else "clean"
            hint = f"derain {command} {shlex.quote(input_dir)}"
            raise InputFailed(f"{input_dir}: is a file, not a folder; to clean it use `{hint}`")
        raise InputFailed(f"{input_dir}: no such folder")
    if source.same_as(target):
        raise BadSetup(f"{target}: the output folder must differ from the input folder (inputs are never overwritten)")
    sources = source.files(is_image_path, exclude=target)
    videos = source.files(is_video_path, exclude=target)
    if engine == "ray":  # one task per clip, so that a folder of clips spreads over the cluster
        sources = sorted(sources + videos)
    elif videos:  # each needs its own settings and progress: `derain video`
        console.print(
            f"[yellow]note[/]: skipping {len(videos)} video file(s); clean them with `derain video` or --engine ray"
        )
    if not sources:
        wanted = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS if engine == "ray" else IMAGE_EXTENSIONS
        looked_for = ", ".join(sorted(e[1:] for e in wanted))
        raise InputFailed(f"{input_dir}: no images found (looked for {looked_for})")
    summary = Summary()
    jobs, claimed = [], {}
    for src in sources:
        mirrored = target.root / src.relative_to(source.root)
        if is_video_path(Path(src.name)):  # the same name, in a container that holds H.264
            dst = video_output_path(mirrored, suffix="")
            outputs = [dst]
        else:
            dst = with_ext(mirrored, ext)
            outputs = [dst, overlay_path_for(dst)] if with_overlay else [dst]
        taken = next((out for out in outputs if out in claimed), None)
        if taken is not None:  # e.g. a.jpg and a.png with --ext png
            summary.failed.append((src, f"its output {taken.name} is already taken by {claimed[taken].name}"))
        elif all(target.exists(out) for out in outputs) and not overwrite:
            summary.skipped += 1
        else:
            jobs.append((src, dst))
        for out in outputs:
            claimed.setdefault(out, src)
    if jobs and engine == "ray":
        _make_folder(target)
        step = distributed.Step(quality, max_pixels, with_overlay, keep_metadata=not strip_metadata)
        _run_ray(jobs, source, target, step, ray_address, workers, model, summary)
    elif jobs:
        derainer = load_derainer(**model)
        _make_folder(target)
        _run(derainer, jobs, quality, max_pixels, summary, with_overlay, keep_metadata=not strip_metadata)
    summary.report()
    if summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if summary.failed:
        sys.exit(EXIT_FAILED)
