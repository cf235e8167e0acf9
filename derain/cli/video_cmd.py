"""derain video (clean a clip) and derain synth-video (render clips to measure it on)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..engine import Derainer
from ..evaluate import report_json
from ..fusion import DEFAULT_RADIUS
from ..imageio import is_image_path, write_atomic
from ..synth import RENDERER_VERSION
from ..video import DEFAULT_CODEC, DEFAULT_CRF, MAX_CRF, clean_video, probe, video_output_path
from ..video_eval import ClipScore, evaluate_clips
from ..video_synth import CLIP_FILE, MOTIONS, synthesize_clips
from .common import BadSetup, InputFailed, console, friendly, load_derainer, make_parent, model_options, plural
from .synth_cmd import photos_to_render, refuse_an_old_render, render_size_option, split_option


def parse_time(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Seconds from '90', '1:30' or '0:01:30.5'."""
    if value is None:
        return None
    bad = click.BadParameter(f"'{value}' is not a time like 90, 1:30 or 0:01:30.5")
    parts = value.split(":")
    try:
        fields = [float(part) for part in parts]
    except ValueError:
        raise bad from None
    # minutes and seconds after the first field stay under 60: 1:75 is a typo, not 2:15
    if len(fields) > 3 or min(fields) < 0 or any(f >= 60 for f in fields[1:]):
        raise bad
    seconds = 0.0
    for field in fields:
        seconds = seconds * 60 + field
    return seconds


window_option = click.option(
    "--window",
    default=DEFAULT_RADIUS,
    show_default=True,
    type=click.IntRange(0, 32),
    help="How many frames away, on each side, fusion looks for what a drop hides; it uses the frames "
    "1, 2, 3, 4, 6, 8, 12 … and N away (0 = per frame). A slow pan needs a wide window to see behind a large drop.",
)


@click.command("video")
@click.argument("input_path", metavar="IN", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write.  [default: IN's folder, <stem><suffix>.mp4|.mov|.mkv]",
)
@click.option("--suffix", default="_derained", show_default=True, help="Added to the name when -o is not given.")
@click.option("--per-frame", is_flag=True, help="Clean each frame alone (no temporal fusion).")
@window_option
@click.option(
    "--model-drops-only",
    is_flag=True,
    help="Fuse only where the model saw drops, not also where the frames around show drops it missed "
    "(those stay put while the scene moves). For footage with a car's bonnet or burned-in text in view: "
    "they move with the camera too, and their sharp edges may get a fringe.",
)
@click.option("--codec", default=DEFAULT_CODEC, show_default=True, help="Video encoder (any FFmpeg offers).")
@click.option(
    "--crf",
    default=DEFAULT_CRF,
    show_default=True,
    type=click.IntRange(0, MAX_CRF),
    help="Constant quality for libx264/libx265: lower is better; 17 is visually lossless.",
)
@click.option("--start", callback=parse_time, metavar="TIME", help="Begin here (seconds, or M:SS, H:MM:SS).")
@click.option("--end", callback=parse_time, metavar="TIME", help="Stop here (exclusive).")
@model_options
@friendly
def video_cmd(
    input_path: Path,
    output: Path | None,
    suffix: str,
    per_frame: bool,
    window: int,
    model_drops_only: bool,
    codec: str,
    crf: int,
    start: float | None,
    end: float | None,
    **model: str,
) -> None:
    """Remove raindrops from a video, using the frames around each frame.

    Drops stay put on the glass while the scene moves behind them: where a drop hides
    something in one frame, a neighbouring frame that saw it clearly lends its pixels
    (optical flow, on by default); a drop the model missed is found by how it stays in place
    while the scene moves, and things moving on their own are left alone (a bonnet or
    burned-in text moves with the camera like a drop: see --model-drops-only). Fusion asks the
    frames 1, 2, 3, 4, 6, 8, 12 and 16 away on each side (--window), far enough for a slow pan to
    uncover what a large drop hides; only about 2·N frames are held. Frame count, frame rate,
    timestamps, size, colour tags and rotation are kept; audio and subtitles are copied
    untouched; video is encoded as H.264. Anything FFmpeg reads works (mp4, mov, mkv, avi,
    webm …).

    \b
    Examples:
      derain video dashcam.mp4                # writes dashcam_derained.mp4
      derain video drone.mov -o clean.mov --start 1:00 --end 1:30
      derain video robot.mkv --per-frame --crf 20 --device cuda
      derain video drone.mp4 --window 8       # less memory and time; fast pans need no more
    """
    if input_path.is_dir():  # batch cleans the videos of a folder only on Ray: one job per clip
        hint = f"derain batch {shlex.quote(str(input_path))} --engine ray"
        raise InputFailed(f"{input_path}: is a folder; give one video, or clean all of its videos with `{hint}`")
    if is_image_path(input_path):  # FFmpeg would read it as a one-frame video
        raise InputFailed(f"{input_path}: is a photo; clean it with `derain clean {shlex.quote(str(input_path))}`")
    if start is not None and end is not None and end <= start:
        raise click.BadParameter(f"{end:g} s is not after --start ({start:g} s)", param_hint="'--end'")
    dst = output or video_output_path(input_path, suffix)
    make_parent(dst)
    try:
        info = probe(input_path, start, end)
    except ImportError as exc:
        raise BadSetup(str(exc)) from None
    for note in info.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    derainer = load_derainer(**model)
    fuse = not per_frame and window > 0
    mode = f"fusing ±{window} frames" if fuse else "frame by frame"
    copied = f", copying {', '.join(info.copied)}" if info.copied else ""
    console.print(f"{info.width}×{info.height} at {float(info.fps):.3g} fps, {mode}{copied}", highlight=False)
    with Progress(
        TextColumn("[bold]Deraining"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TextColumn("{task.fields[fps]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        speed_estimate_period=3600,  # frames leave in bursts (batches, fusion window): average the whole run
    ) as progress:
        task = progress.add_task("video", total=info.frames or None, fps="")

        def advance(count: int) -> None:
            elapsed = progress.tasks[0].elapsed
            progress.update(task, completed=count, fps=f"{count / elapsed:.2f} fps" if elapsed else "")

        written = clean_video(
            derainer,
            input_path,
            dst,
            fuse=fuse,
            radius=window,
            find_missed=not model_drops_only,
            codec=codec,
            crf=crf,
            start=start,
            end=end,
            on_frame=advance,
        )
    console.print(f"[green]✓[/] {escape(str(dst))} ({plural(written, 'frame')})", soft_wrap=True)


@click.command("synth-video")
@click.argument("clean_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder to create: one sub-folder per clip (data/, gt/, mask/, clip.json).",
)
@click.option("--count", "-n", default=8, show_default=True, type=click.IntRange(min=1), help="Clips to render.")
@click.option("--frames", default=12, show_default=True, type=click.IntRange(min=2), help="Frames per clip.")
@render_size_option("320x240", "the frames")
@click.option(
    "--motion",
    default="moving",
    show_default=True,
    type=click.Choice(MOTIONS),
    help="moving: a pan of 1.5–20 px per frame at 720 px wide, a zoom of up to 2.5 % per frame (driving "
    "forward) and shake; static: a camera that holds still.",
)
@click.option(
    "--sliding",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of clips in which some drops slide slowly down the glass.",
)
@click.option("--seed", default=0, show_default=True, help="Same seed, same photos: the same clips.")
@split_option
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the clips already in OUTPUT, removing them first. Without it such a folder is refused: "
    "fewer clips would leave the rest of the old ones to be scored.",
)
@friendly
def synth_video_cmd(
    clean_dir: Path,
    output: Path,
    count: int,
    frames: int,
    size: tuple[int, int],
    motion: str,
    sliding: float,
    seed: int,
    split: str,
    overwrite: bool,
) -> None:
    """Render rainy clips with ground truth: a camera moving over a clean photo behind drops fixed on the glass.

    Each clip is OUT/<i>/ in the Raindrop layout (data/<t>_rain.png, gt/<t>_clean.png,
    mask/<t>_mask.png) with clip.json (photo, camera path and per-frame views, seed). Sensor
    noise is new in every frame; with --sliding some drops creep down the glass. Score them with
    `derain eval OUT --video`.

    \b
    Examples:
      derain synth-video photos/ -o clips/ --count 8 --split val
      derain synth-video photos/ -o clips_static/ --motion static --seed 1
      derain synth-video photos/ -o clips_sliding/ --sliding 1 --frames 24
    """
    photos = photos_to_render(clean_dir, split)
    old = sorted(p.parent for p in output.glob(f"*/{CLIP_FILE}"))
    refuse_an_old_render(output, len(old), "clip", overwrite)
    for folder in old:
        shutil.rmtree(folder)
    with Progress(console=console) as progress:
        task = progress.add_task(f"Rendering clips (renderer v{RENDERER_VERSION})", total=count)
        synthesize_clips(
            photos, output, count, size, frames, motion, seed, sliding, on_clip=lambda i: progress.advance(task)
        )
    made = f"{plural(count, 'clip')} of {frames} frames from {plural(len(photos), 'photo')}"
    console.print(f"[green]✓[/] {made} in {escape(str(output))}")


def eval_video(root: Path, derainer: Derainer, window: int, json_path: Path | None) -> None:
    """`derain eval --video`: fused and per-frame scores and flicker of every clip under ROOT."""
    table = Table("clip", "frames", "PSNR fused", "PSNR per-frame", "PSNR input", "SSIM fused", "SSIM per-frame")
    table.add_column("flicker fused / per-frame / truth")

    def add(c: ClipScore) -> None:
        table.add_row(*_row(c))

    with console.status("Scoring clips…"):
        report = evaluate_clips(root, derainer, window, on_clip=add)
    table.add_section()
    mean = report.mean
    table.add_row(*(f"[bold]{cell}" for cell in _row(mean)))
    console.print(table)
    console.print(
        f"{len(report.clips)} clips: fusion (±{window} frames) {mean.psnr - mean.per_frame_psnr:+.2f} dB over "
        f"per-frame ({mean.psnr:.2f} vs {mean.per_frame_psnr:.2f} dB; input {mean.input_psnr:.2f}); flicker "
        f"{mean.flicker:.2f} vs {mean.per_frame_flicker:.2f} (ground truth {mean.gt_flicker:.2f})"
    )
    if json_path:
        write_atomic(json_path, report_json(report.to_dict()).encode())


def _row(c: ClipScore) -> list[str]:
    scores = [f"{v:.2f}" for v in (c.psnr, c.per_frame_psnr, c.input_psnr)] + [
        f"{c.ssim:.4f}",
        f"{c.per_frame_ssim:.4f}",
    ]
    return [c.name, str(c.frames), *scores, f"{c.flicker:.2f} / {c.per_frame_flicker:.2f} / {c.gt_flicker:.2f}"]
