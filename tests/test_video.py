"""derain video and clean_video on tiny clips made here (64×48, a few frames, with and without audio)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from derain import fusion
from derain.cli import main
from derain.engine import Derainer
from derain.video import VideoError, clean_video, video_output_path

from .test_cli import assert_fails, run

av = pytest.importorskip("av")

FPS = Fraction(30000, 1001)  # NTSC: a rate that rounding would break
SAMPLES = 1024


def make_clip(path: Path, frames: int = 6, audio: bool = True, rotation: int = 0) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=48000) if audio else None
        for t in range(frames):
            image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
            if sound is not None:
                samples = (0.1 * rng.standard_normal((1, SAMPLES))).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 48000, t * SAMPLES
                for packet in sound.encode(frame):
                    out.mux(packet)
        for stream in out.streams:
            for packet in stream.encode():
                out.mux(packet)
    return path


def video_frames(path: Path) -> list:
    with av.open(str(path)) as c:
        return [(f.pts, f.rotation) for f in c.decode(video=0)]


def audio_payload(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.size]


@pytest.fixture
def derainer(tiny_weights: Path) -> Derainer:
    return Derainer(tiny_weights, device="cpu")


@pytest.mark.parametrize("audio", [True, False])
def test_cli_keeps_frames_rate_timestamps_and_copies_audio(tmp_path: Path, tiny_weights: Path, audio: bool) -> None:
    src = make_clip(tmp_path / "dash.mp4", audio=audio)
    result = CliRunner().invoke(main, ["video", str(src), "--weights", str(tiny_weights), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    dst = tmp_path / "dash_derained.mp4"
    assert video_frames(dst) == video_frames(src)
    with av.open(str(dst)) as c:
        stream = c.streams.video[0]
        assert (stream.average_rate, stream.width, stream.height) == (FPS, 64, 48)
        assert stream.codec_context.name == "h264"
        assert [s.type for s in c.streams] == (["video", "audio"] if audio else ["video"])
    if audio:
        assert audio_payload(dst) == audio_payload(src)  # copied bit for bit, not re-encoded


def test_model_drops_only_reaches_fusion(tmp_path: Path, tiny_weights: Path, monkeypatch) -> None:
    seen: list[bool] = []
    real_fuse = fusion.fuse

    def spy(restorations, radius, workers=None, find_missed=True):
        seen.append(find_missed)
        return real_fuse(restorations, radius, workers, find_missed)

    monkeypatch.setattr("derain.frames.fuse", spy)
    src = make_clip(tmp_path / "dash.mp4", frames=3, audio=False)
    for flag, expected in [([], True), (["--model-drops-only"], False)]:
        args = ["video", str(src), "-o", str(tmp_path / f"out{len(seen)}.mp4"), "-w", str(tiny_weights), *flag]
        result = CliRunner().invoke(main, [*args, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert seen[-1] is expected


def test_part_rotation_and_frames_changed(tmp_path: Path, derainer: Derainer) -> None:
    src = make_clip(tmp_path / "in.mov", frames=10, rotation=90)
    dst = tmp_path / "part.mov"
    seconds = 1001 / 30000
    written = clean_video(derainer, src, dst, start=2.5 * seconds, end=6.5 * seconds)
    frames = video_frames(dst)
    assert written == len(frames) == 4  # frames 3, 4, 5, 6
    assert frames[0][0] == 0 and all(rotation == 90 for _, rotation in frames)
    assert 0 < len(audio_payload(dst)) < len(audio_payload(src))


def test_interruption_leaves_no_output_and_no_temp_file(tmp_path: Path, derainer: Derainer) -> None:
    src = make_clip(tmp_path / "in.mp4")

    def stop(count: int) -> None:
        if count == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        clean_video(derainer, src, tmp_path / "out.mp4", on_frame=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_unreadable_missing_and_silent_inputs_are_one_line_errors(tmp_path: Path, tiny_weights: Path) -> None:
    (tmp_path / "notes.mp4").write_text("not a video")
    sound_only = tmp_path / "sound.m4a"
    with av.open(str(sound_only), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, SAMPLES), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    for name, message in [("notes.mp4", "not a video"), ("missing.mp4", "no such file"), ("sound.m4a", "no video")]:
        result = CliRunner().invoke(main, ["video", str(tmp_path / name), "-w", str(tiny_weights), "--device", "cpu"])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "notes_derained.mp4").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a folder no one can write in, even root")
def test_an_unwritable_output_folder_is_named_not_the_input(tmp_path: Path, tiny_weights: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=2, audio=False)
    result = run("video", src, "-o", "/proc/out.mp4", "-w", tiny_weights, "--device", "cpu")
    error = assert_fails(result, 1, "/proc/out.mp4: cannot write in /proc", one_line=False)
    assert "in.mp4" not in error


def test_cli_makes_the_output_folder_as_clean_does(tmp_path: Path, tiny_weights: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=2, audio=False)
    dst = tmp_path / "new" / "folder" / "out.mp4"
    assert run("video", src, "-o", dst, "-w", tiny_weights, "--device", "cpu").exit_code == 0
    assert video_frames(dst) == video_frames(src)


def test_refuses_to_overwrite_input_and_bad_times(tmp_path: Path, derainer: Derainer, tiny_weights: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=2, audio=False)
    with pytest.raises(VideoError, match="overwrite the input"):
        clean_video(derainer, src, src)
    with pytest.raises(VideoError, match="after the start"):
        clean_video(derainer, src, tmp_path / "o.mp4", start=2, end=1)
    with pytest.raises(VideoError, match="crf must be between 0 and 51 for libx264, not -5"):
        clean_video(derainer, src, tmp_path / "o.mp4", crf=-5)
    with pytest.raises(VideoError, match="name the output with a container's extension"):
        clean_video(derainer, src, tmp_path / "o")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]
    result = CliRunner().invoke(main, ["video", str(src), "--start", "soon", "-w", str(tiny_weights)])
    assert result.exit_code == 2 and "not a time" in result.output


def test_h264_in_avi_comes_out_in_order(tmp_path: Path, derainer: Derainer) -> None:
    """AVI stores no presentation times: its B-frames decode with times out of order."""
    src = make_clip(tmp_path / "dashcam.avi", frames=8, audio=False)
    assert [pts for pts, _ in video_frames(src)] != sorted(pts for pts, _ in video_frames(src))
    dst = tmp_path / "out.mkv"
    assert clean_video(derainer, src, dst) == 8
    times = [pts for pts, _ in video_frames(dst)]
    assert len(times) == 8 and times == sorted(set(times))


def test_default_output_names() -> None:
    assert video_output_path(Path("a/dash.MP4")) == Path("a/dash_derained.mp4")
    assert video_output_path(Path("clip.webm")) == Path("clip_derained.mkv")  # WebM cannot hold H.264


def test_synth_video_and_eval_video(tmp_path: Path, tiny_weights: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    from derain.imageio import Image, write_image

    scene = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    write_image(photos / "p.png", Image(rgb=scene, alpha=None, grayscale=False))
    runner = CliRunner()
    clips = tmp_path / "clips"
    args = ["synth-video", str(photos), "-o", str(clips), "--count", "1", "--frames", "3", "--size", "64x48"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (clips / "0" / "data").iterdir()) == ["0_rain.png", "1_rain.png", "2_rain.png"]
    assert json.loads((clips / "0" / "clip.json").read_text())["frames"] == 3

    report = tmp_path / "video.json"
    args = ["eval", str(clips), "--video", "-w", str(tiny_weights), "--device", "cpu", "--json", str(report)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    scores = json.loads(report.read_text())
    assert scores["mean"]["frames"] == 3 and len(scores["clips"]) == 1
    assert {"psnr", "per_frame_psnr", "flicker", "per_frame_flicker", "gt_flicker"} <= set(scores["mean"])

    synth = ["synth-video", str(photos), "-o", str(clips), "--count", "1", "--frames", "2", "--size", "64x48"]
    again = runner.invoke(main, synth)
    assert again.exit_code == 1 and "already holds 1 clip: add --overwrite" in again.output, again.output
    replaced = runner.invoke(main, [*synth, "--overwrite"])
    assert replaced.exit_code == 0 and "1 clip of 2 frames from 1 photo in" in replaced.output, replaced.output
    assert json.loads((clips / "0" / "clip.json").read_text())["frames"] == 2
    assert sorted(p.name for p in (clips / "0" / "data").iterdir()) == ["0_rain.png", "1_rain.png"]
    huge = runner.invoke(main, ["synth-video", str(photos), "-o", str(tmp_path / "huge"), "--size", "8193x16"])
    assert huge.exit_code == 2 and "at most 8192" in huge.output and not (tmp_path / "huge").exists()


def test_colours_survive_decode_and_encode(tmp_path: Path, derainer: Derainer, monkeypatch) -> None:
    src = tmp_path / "hd.mp4"
    colours = [(200, 40, 40), (30, 160, 90), (60, 70, 220)]
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        ctx = stream.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = 1, 1, 1, 1  # BT.709, limited range
        for colour in colours:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), colour, np.uint8), format="rgb24")
            for packet in stream.encode(frame.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    # pixels as decoded
    monkeypatch.setattr("derain.video.derain_frames", lambda derainer, frames, *args, **kwargs: frames)
    clean_video(derainer, src, tmp_path / "out.mp4", crf=0)
    with av.open(str(tmp_path / "out.mp4")) as c:
        ctx = c.streams.video[0].codec_context
        assert (ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range) == (1, 1, 1, 1)
        decoded = [f.reformat(format="rgb24", src_color_range=1).to_ndarray() for f in c.decode(video=0)]
    for colour, frame in zip(colours, decoded, strict=True):  # 8-bit 4:2:0 costs up to ~3 levels a generation;
        assert np.abs(frame[8:-8, 8:-8].astype(int) - colour).max() <= 6  # a BT.601/709 mix-up costs 10 and more
