"""The video commands without PyAV, and derain batch leaving video files to `derain video`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from derain.cli import main
from derain.imageio import Image, write_image

from .test_cli import _pairs, assert_fails, run


def test_missing_pyav_is_a_one_line_hint(tmp_path: Path, tiny_weights: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # import av now fails, as without the extra
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    result = CliRunner().invoke(main, ["video", str(tmp_path / "clip.mp4"), "-w", str(tiny_weights)])
    assert result.exit_code == 2
    assert 'pip install "derain[video]"' in result.output and "Traceback" not in result.output


def test_batch_says_it_skips_videos(tmp_path: Path, tiny_weights: Path) -> None:
    tree = tmp_path / "footage"
    (tree / "day1").mkdir(parents=True)
    (tree / "day1" / "drive.MP4").write_bytes(b"\x00" * 64)
    args = ["batch", str(tree), "-w", str(tiny_weights), "--device", "cpu"]

    only_videos = CliRunner().invoke(main, args)
    assert only_videos.exit_code == 1
    assert "skipping 1 video file(s)" in only_videos.output and "derain video" in only_videos.output

    write_image(tree / "frame.png", Image(rgb=np.zeros((16, 16, 3), np.uint8), alpha=None, grayscale=False))
    mixed = CliRunner().invoke(main, args)
    assert mixed.exit_code == 0, mixed.output
    assert "skipping 1 video file(s)" in mixed.output
    assert (tmp_path / "footage_derained" / "frame.png").is_file()
    assert not (tmp_path / "footage_derained" / "day1").exists()


def test_eval_video_refuses_a_folder_of_photos_that_holds_no_clips(
    tmp_path: Path, tiny_weights: Path, rng: np.random.Generator
) -> None:
    _pairs(tmp_path / "set", rng, count=2)  # the layout `derain synth` writes: unrelated photos, not a clip
    result = run("eval", tmp_path / "set", "--video", "-w", tiny_weights, "--device", "cpu")
    assert_fails(result, 1, "holds no clips from `derain synth-video`")


def test_video_of_a_folder_says_it_is_one(tmp_path: Path, tiny_weights: Path) -> None:
    (tmp_path / "clips").mkdir()
    result = run("video", tmp_path / "clips", "-w", tiny_weights, "--device", "cpu")
    assert_fails(result, 1, "clips: is a folder", "derain batch")


def test_video_of_a_photo_points_to_clean(tmp_path: Path, tiny_weights: Path, rng: np.random.Generator) -> None:
    write_image(tmp_path / "rainy.jpg", Image(rgb=np.zeros((16, 16, 3), np.uint8), alpha=None, grayscale=False))
    result = run("video", tmp_path / "rainy.jpg", "-w", tiny_weights, "--device", "cpu")
    assert_fails(result, 1, "rainy.jpg: is a photo", "derain clean")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rainy.jpg"]


@pytest.mark.parametrize(
    ("times", "reason"),
    [(["--start", "1:75"], "'1:75' is not a time"), (["--start", "1", "--end", "0.5"], "0.5 s is not after --start")],
)
def test_video_bad_times_are_usage_errors(tmp_path: Path, tiny_weights: Path, times: list[str], reason: str) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    result = run("video", tmp_path / "clip.mp4", *times, "-w", tiny_weights, "--device", "cpu")
    assert_fails(result, 2, reason, one_line=False)
