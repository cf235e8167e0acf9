"""Video files in, derained video files out, through PyAV (FFmpeg): ``clean_video(derainer, src, dst)``.

Frames keep their count, timestamps, size, colour tags and rotation; audio and subtitle streams
are copied packet for packet (never re-encoded); video is encoded with H.264 by default. Decoding
runs on a thread ahead of the model and encoding on a thread behind it, and only a bounded
window of frames is held, so a long 1080p clip needs no more memory than a short one. The output
is written beside ``dst`` under a hidden name and renamed at the end: an interruption never
leaves half a file at ``dst``.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np

from .engine import Derainer
from .files import same_file
from .frames import QUEUE_FRAMES, Prefetch, derain_frames
from .fusion import DEFAULT_RADIUS

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv", ".3gp"}
)
#: Containers the output keeps; others (WebM cannot hold H.264, AVI cannot hold most audio) become .mkv.
KEPT_CONTAINERS = frozenset({".mp4", ".m4v", ".mov", ".mkv"})
DEFAULT_CODEC = "libx264"
CRF_CODECS, MAX_CRF = ("libx264", "libx265"), 51
"""The encoders whose constant quality ``crf`` sets, and its worst value."""
DEFAULT_CRF = 17
"""x264's constant-quality level that is visually lossless for most footage."""
HDR_TRANSFERS = {16: "PQ (HDR10)", 18: "HLG"}
"""FFmpeg transfer-characteristic codes of HDR video."""
INSTALL_HINT = 'video needs PyAV: pip install "derain[video]"'


class VideoError(ValueError):
    """A video that cannot be read or written; the message is one line for the user."""


def require_av() -> ModuleType:
    """The ``av`` module, or an ImportError whose message says how to install it."""
    try:
        import av
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return av


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def video_output_path(path: Path, suffix: str = "_derained") -> Path:
    """``<stem><suffix>`` beside the input, in the input's container when it can hold H.264 and any audio, else .mkv."""
    ext = path.suffix.lower() if path.suffix.lower() in KEPT_CONTAINERS else ".mkv"
    return path.with_name(f"{path.stem}{suffix}{ext}")


@dataclass
class VideoInfo:
    """What the input holds, and what will be done with it."""

    width: int
    height: int
    fps: Fraction
    frames: int
    """Frames that will be processed (counted from the stream header or estimated from the duration)."""
    bit_depth: int
    codec: str
    copied: list[str] = field(default_factory=list)
    """Audio and subtitle streams that will be copied, e.g. 'audio aac'."""
    notes: list[str] = field(default_factory=list)
    """What the user should know: 10-bit or HDR handling, dropped data streams."""


def _open_input(av: ModuleType, src: Path):
    if not Path(src).is_file():
        raise VideoError(f"{src}: no such file")
    try:
        container = av.open(str(src))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{src}: not a video FFmpeg can read ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{src}: has no video stream")
    return container


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _bit_depth(stream) -> int:
    fmt = stream.codec_context.format
    return max((c.bits for c in fmt.components), default=8) if fmt is not None else 8


def _describe(container, src: Path, start: float | None, end: float | None) -> VideoInfo:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    fps = stream.average_rate or stream.guessed_rate or Fraction(25)
    duration = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
    span = max(0.0, (end if end is not None else duration) - (start or 0.0))
    frames = stream.frames if stream.frames and start is None and end is None else round(span * fps)
    info = VideoInfo(ctx.width, ctx.height, Fraction(fps), frames, _bit_depth(stream), ctx.name)
    for other in container.streams:
        if other.type in ("audio", "subtitle"):
            info.copied.append(f"{other.type} {other.codec_context.name}")
        elif other is not stream:
            info.notes.append(f"{other.type} stream {other.index} is not copied")
    if info.bit_depth > 8:
        info.notes.append(f"{info.bit_depth}-bit input: derained in 16-bit, written as 10-bit")
    hdr = HDR_TRANSFERS.get(int(ctx.color_trc or 0))
    if hdr:
        info.notes.append(
            f"{hdr} input: derained on its coded values as if SDR (the model knows SDR photos), colour tags kept"
        )
    return info


def probe(src: Path, start: float | None = None, end: float | None = None) -> VideoInfo:
    """Size, rate, frame count and streams of a video, without decoding it."""
    av = require_av()
    with _open_input(av, src) as container:
        return _describe(container, src, start, end)


@dataclass
class _Decoded:
    rgb: np.ndarray
    pts: int | None
    rotation: int


def _demux(container, start: float | None, end: float | None) -> Iterator:
    """Decoded video frames in [start, end), interleaved with the audio/subtitle packets to copy."""
    video = container.streams.video[0]
    others = [s for s in container.streams if s.type in ("audio", "subtitle")]
    if start:
        container.seek(int(start / video.time_base), stream=video)
    deep = _bit_depth(video) > 8
    for packet in container.demux(video, *others):
        if packet.stream is not video:
            if packet.dts is not None:
                yield packet
            continue
        for frame in packet.decode():
            time = frame.time
            if time is not None and start is not None and time < start - 1e-6:
                continue
            if time is not None and end is not None and time >= end - 1e-6:
                return
            rgb = frame.reformat(format="rgb48le" if deep else "rgb24", src_color_range=frame.color_range)
            yield _Decoded(rgb.to_ndarray(), frame.pts, frame.rotation)


class _Writer:
    """Encodes frames and muxes packets on one thread, in the order they are handed in."""

    def __init__(self, output, stream) -> None:
        self.output, self.stream = output, stream
        self.q: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="derain-encode", daemon=True)
        self.thread.start()

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def _work(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is not None:
                continue  # keep draining so put() never blocks
            try:
                packets = self.stream.encode(item) if hasattr(item, "planes") else [item]
                for packet in packets:
                    self.output.mux(packet)
            except BaseException as exc:
                self.error = exc

    def close(self) -> None:
        """Stop the thread (the queue drains first)."""
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join()

    def finish(self) -> None:
        """Write everything handed in, then flush the encoder; re-raise what went wrong on the thread."""
        self.close()
        if self.error is not None:
            raise self.error
        for packet in self.stream.encode():
            self.output.mux(packet)


def _to_frame(av: ModuleType, rgb: np.ndarray, pts: int | None, stream):
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if rgb.dtype == np.uint16 else "rgb24")
    ctx = stream.codec_context
    frame = frame.reformat(
        format=stream.pix_fmt, dst_colorspace=ctx.colorspace or None, dst_color_range=ctx.color_range or None
    )
    frame.pts = pts
    frame.time_base = stream.time_base
    return frame


@dataclass
class _Timing:
    """Shifts copied packets and frames so a part (``--start``) begins at zero, and cuts at ``end``."""

    begin: Fraction | None = None
    """The first frame's time when a part starts there; None keeps every timestamp as it was."""
    end: float | None = None

    def ticks(self, time_base: Fraction) -> int:
        return 0 if self.begin is None else int(self.begin / time_base)

    def shifted(self, packet, stream):
        """The packet retimed onto the output ``stream``, or None outside the part."""
        tb = packet.time_base
        time = Fraction(packet.pts if packet.pts is not None else packet.dts) * tb
        if (self.begin is not None and time < self.begin) or (self.end is not None and time >= Fraction(self.end)):
            return None
        shift = self.ticks(tb)
        if packet.pts is not None:
            packet.pts -= shift
        packet.dts -= shift
        packet.stream = stream
        return packet


class _FrameClock:
    """The output frames' times: the decoded ones, or frame numbers at the stream's rate where
    the input stores no presentation times (AVI, whose H.264 B-frames decode with times out of
    order) or a time goes backwards. An encoder refuses times that do not increase."""

    NO_PRESENTATION_TIMES = frozenset({"avi"})

    def __init__(self, source, container_format: str) -> None:
        rate = source.average_rate or source.guessed_rate or Fraction(25)
        self.step = max(1, round(1 / (rate * source.time_base)))
        self.numbered = container_format in self.NO_PRESENTATION_TIMES
        self.last: int | None = None

    def __call__(self, pts: int | None) -> int | None:
        if self.last is not None and (self.numbered or pts is None or pts <= self.last):
            self.numbered = True  # from here on: evenly spaced after the last good time
            pts = self.last + self.step
        self.last = pts
        return pts


def clean_video(
    derainer: Derainer,
    src: Path,
    dst: Path,
    *,
    fuse: bool = True,
    radius: int = DEFAULT_RADIUS,
    find_missed: bool = True,
    codec: str = DEFAULT_CODEC,
    crf: int = DEFAULT_CRF,
    start: float | None = None,
    end: float | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> int:
    """Derain the video ``src`` into ``dst``; returns the number of frames written.

    ``fuse`` takes pixels from frames up to ``radius`` away on each side (1, 2, 3, 4, 6, 8, 12 … apart)
    where they saw the scene behind a drop (see :mod:`derain.fusion`; ``find_missed=False``:
    only where the model saw drops); ``start``/``end``
    (seconds) do a part, its timestamps shifted to begin at zero. ``on_frame(n)`` is called
    after every written frame.
    """
    av = require_av()
    src, dst = Path(src), Path(dst)
    if same_file(src, dst):
        raise VideoError(f"{dst}: refusing to overwrite the input; choose another output path")
    if start is not None and end is not None and end <= start:
        raise VideoError(f"the end ({end:g} s) must come after the start ({start:g} s)")
    if not dst.parent.is_dir():
        raise VideoError(f"{dst}: folder {dst.parent} does not exist")
    if not dst.suffix:  # FFmpeg picks the container by it
        raise VideoError(f"{dst}: name the output with a container's extension, such as .mp4 or .mkv")
    if codec in CRF_CODECS and not 0 <= crf <= MAX_CRF:
        raise VideoError(f"crf must be between 0 and {MAX_CRF} for {codec}, not {crf}")
    tmp = dst.with_name(f".{dst.stem}.{secrets.token_hex(4)}.tmp{dst.suffix}")  # FFmpeg picks the container by suffix
    with _open_input(av, src) as container:
        info = _describe(container, src, start, end)
        items = Prefetch(_demux(container, start, end), "derain-decode")
        try:
            _claim(tmp, dst)
            process = lambda frames: derain_frames(derainer, frames, fuse, radius, find_missed=find_missed)  # noqa: E731
            written = _transcode(
                av, container, items, tmp, info, codec, crf, _Timing(end=end), start is not None, process, on_frame
            )
            if written == 0:
                raise VideoError(f"{src}: no frames to process" + (" in the chosen part" if start or end else ""))
            os.replace(tmp, dst)
        except av.FFmpegError as exc:
            raise VideoError(f"{src}: {_reason(exc)}") from None
        finally:
            items.close()
            tmp.unlink(missing_ok=True)
    return written


def _claim(tmp: Path, dst: Path) -> None:
    """Create the temp file now: FFmpeg opens its output only at the first packet, and its error
    there would read as a failure of the input."""
    try:
        tmp.touch(exist_ok=False)
    except OSError as exc:
        raise VideoError(f"{dst}: cannot write in {dst.parent} ({exc.strerror or exc})") from None


def _transcode(av, container, items, tmp, info, codec, crf, timing, shift, process, on_frame) -> int:
    """Copy streams and encode ``process``-ed frames into ``tmp``; returns the frames written."""
    source = container.streams.video[0]
    try:
        output = av.open(str(tmp), "w")
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{tmp.parent}: cannot write here ({_reason(exc)})") from None
    with output:
        stream_items = iter(items)
        pending = []
        first = None
        for item in stream_items:
            if isinstance(item, _Decoded):
                first = item
                break
            pending.append(item)
        if first is None:
            return 0
        if shift:
            timing.begin = Fraction(first.pts or 0) * source.time_base
        copies, stream = {}, None
        for s in container.streams:  # in the input's order
            if s is source:
                stream = _add_video_stream(av, output, codec, crf, source, info, first.rotation)
            elif s.type in ("audio", "subtitle"):
                copies[s.index] = _copy_stream(av, output, s, tmp.suffix)
        writer = _Writer(output, stream)
        stamps: list[int | None] = []

        def copy(packet) -> None:
            retimed = timing.shifted(packet, copies[packet.stream.index])
            if retimed is not None:
                writer.put(retimed)

        def frames() -> Iterator[np.ndarray]:
            for packet in pending:
                copy(packet)
            stamps.append(first.pts)
            yield first.rgb
            for item in stream_items:
                if isinstance(item, _Decoded):
                    stamps.append(item.pts)
                    yield item.rgb
                else:
                    copy(item)

        offset = timing.ticks(source.time_base)
        retime = _FrameClock(source, container.format.name)
        count = 0
        try:
            for rgb in process(frames()):
                pts = retime(stamps[count])
                writer.put(_to_frame(av, rgb, None if pts is None else pts - offset, stream))
                count += 1
                if on_frame:
                    on_frame(count)
            writer.finish()
        finally:
            writer.close()
        return count


def _copy_stream(av: ModuleType, output, stream, suffix: str):
    try:
        return output.add_stream_from_template(stream)
    except (av.FFmpegError, ValueError) as exc:
        raise VideoError(
            f"cannot copy {stream.type} stream {stream.index} ({stream.codec_context.name}) into a {suffix} file "
            f"({_reason(exc)}); try a .mkv output"
        ) from None


def _add_video_stream(av: ModuleType, output, codec: str, crf: int, source, info: VideoInfo, rotation: int):
    try:
        stream = output.add_stream(codec, rate=source.average_rate or info.fps)
    except (av.FFmpegError, ValueError) as exc:
        raise VideoError(
            f"cannot encode with '{codec}' ({_reason(exc)}); write an .mkv or .mp4 file, or pass a --codec "
            "that the container takes (such as libvpx-vp9 for .webm)"
        ) from None
    stream.width, stream.height = info.width, info.height
    stream.time_base = source.time_base
    stream.pix_fmt = _pixel_format(stream.codec_context.codec, source.codec_context.pix_fmt, info.bit_depth)
    ctx, src_ctx = stream.codec_context, source.codec_context
    for tag in ("color_range", "colorspace", "color_primaries", "color_trc"):
        setattr(ctx, tag, getattr(src_ctx, tag))
    if codec == "libx264":
        stream.options = {"crf": str(crf)}
    elif codec == "libx265":  # x265 logs its settings to the terminal unless told not to
        stream.options = {"crf": str(crf), "x265-params": "log-level=error"}
    if rotation:
        stream.set_display_rotation(rotation)
    return stream


def _pixel_format(codec, source: str | None, depth: int) -> str:
    """The source's pixel format when the encoder takes it, else 4:2:0 at the source's depth (8 or 10 bit)."""
    offered = [f.name for f in (codec.video_formats or [])]
    if source in offered:
        return source
    wanted = "yuv420p10le" if depth > 8 else "yuv420p"
    return wanted if wanted in offered or not offered else offered[0]
