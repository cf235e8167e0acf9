"""Tests for the `derain` command line, run in-process with click's CliRunner (and twice as a real process).

Every command that needs a model gets the tiny test model (``--weights``) on the CPU, so nothing here
depends on the shipped weights or on a GPU.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner, Result

import derain
from derain.cli import main
from derain.engine import Derainer, Restoration
from derain.evaluate import evaluate

from .conftest import random_image
from .test_imageio import _jpeg_with_exif

H, W = 24, 32  # the photos' size: tiny, so each command runs in a blink on the CPU
COMMANDS = ["clean", "batch", "attention", "weights", "synth", "train", "eval", "bench"]


# --- helpers ------------------------------------------------------------------------------------


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="derain")


@pytest.fixture
def model(tiny_weights: Path) -> list[str]:
    """The options that make a command use the tiny model on the CPU."""
    return ["--weights", str(tiny_weights), "--device", "cpu"]


def write(path: Path, pixels: np.ndarray, params: Sequence[int] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels, list(params))
    return path


def photo(path: Path, rng: np.random.Generator, height: int = H, width: int = W, dtype: type = np.uint8) -> Path:
    return write(path, random_image(rng, height, width, dtype))


def read(path: Path) -> np.ndarray:
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert pixels is not None, f"{path} is not a readable image"
    return pixels


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def digest(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in files_under(folder)}


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, result.output
    assert result.exception is None, result.output


def assert_fails(result: Result, code: int, *reasons: str, one_line: bool = True) -> str:
    """Exit `code` with a message giving `reasons`, no traceback; returns the error line."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    if one_line:  # nothing but the error itself: no usage text, no progress, no stack
        assert [line for line in result.output.splitlines() if line.strip()] == errors, result.output
    for reason in reasons:
        assert reason in errors[0], result.output
    return errors[0]


def assert_no_temp_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not leftovers, leftovers


# --- the group, --version and --help ------------------------------------------------------------


def test_version() -> None:
    result = run("--version")
    assert_ok(result)
    assert result.output.strip() == f"derain, version {derain.__version__}"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_group_help_lists_every_command(flag: str) -> None:
    result = run(flag)
    assert_ok(result)
    assert "Quick start" in result.output and "derain clean rainy.jpg" in result.output
    assert "130 interrupted" in result.output  # the exit codes are documented
    for command in COMMANDS:
        assert f"  {command} " in result.output, command


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_has_an_example(command: str) -> None:
    result = run(command, "--help")
    assert_ok(result)
    assert result.output.startswith(f"Usage: derain {command}")
    assert "Example" in result.output


def test_unknown_command_is_a_usage_error() -> None:
    assert_fails(run("scrub", "x.jpg"), 2, "No such command 'scrub'", one_line=False)


# --- clean: names, formats, options -------------------------------------------------------------


def test_clean_writes_beside_the_input_by_default(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    before = src.read_bytes()
    result = run("clean", src, *model)
    assert_ok(result)
    assert files_under(tmp_path) == {"rainy.png", "rainy_derained.png"}
    assert str(tmp_path / "rainy_derained.png") in result.output
    assert read(tmp_path / "rainy_derained.png").shape == (H, W, 3)
    assert src.read_bytes() == before
    assert not np.array_equal(read(tmp_path / "rainy_derained.png"), read(src)), "the model changed nothing"


@pytest.mark.parametrize("size", [(H, W), (25, 33), (17, 40)])
def test_clean_keeps_the_size(
    tmp_path: Path, rng: np.random.Generator, model: list[str], size: tuple[int, int]
) -> None:
    src = photo(tmp_path / "in.png", rng, *size)
    assert_ok(run("clean", src, "-o", tmp_path / "out.png", *model))
    assert read(tmp_path / "out.png").shape == (*size, 3)


def test_clean_output_option(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "in" / "rainy.jpg", rng)
    (tmp_path / "out").mkdir()
    assert_ok(run("clean", src, "-o", tmp_path / "out" / "clean.jpg", *model))
    assert files_under(tmp_path) == {"in/rainy.jpg", "out/clean.jpg"}
    assert (tmp_path / "out" / "clean.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


def test_clean_ext_changes_the_format(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.jpg", rng)
    assert_ok(run("clean", src, "--ext", "png", *model))
    assert files_under(tmp_path) == {"rainy.jpg", "rainy_derained.png"}
    assert (tmp_path / "rainy_derained.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # with -o, --ext replaces the extension given there
    assert_ok(run("clean", src, "-o", tmp_path / "x.jpg", "--ext", "TIFF", *model))
    assert "x.tiff" in files_under(tmp_path) and "x.jpg" not in files_under(tmp_path)
    assert (tmp_path / "x.tiff").read_bytes()[:4] in (b"II*\x00", b"MM\x00*")


def test_clean_of_several_photos_points_to_batch(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    photos = [photo(tmp_path / f"{i}.png", rng) for i in range(2)]
    result = run("clean", *photos, *model)
    assert_fails(result, 2, "unexpected extra argument", "use `derain batch` on their folder", one_line=False)
    assert files_under(tmp_path) == {"0.png", "1.png"}


def test_clean_suffix(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    assert_ok(run("clean", src, "--suffix", ".clean", *model))
    assert files_under(tmp_path) == {"rainy.png", "rainy.clean.png"}


def test_clean_attention_writes_an_overlay(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.jpg", rng)
    (tmp_path / "res").mkdir()
    result = run("clean", src, "-o", tmp_path / "res" / "out.jpg", "--attention", *model)
    assert_ok(result)
    assert files_under(tmp_path / "res") == {"out.jpg", "out_overlay.png"}
    assert "overlay" in result.output
    overlay = read(tmp_path / "res" / "out_overlay.png")
    assert overlay.shape == (H, W, 3) and overlay.dtype == np.uint8
    # without -o the overlay follows the default output name
    assert_ok(run("clean", src, "--attention", *model))
    assert {"rainy_derained.jpg", "rainy_derained_overlay.png"} <= files_under(tmp_path)


def test_jpeg_quality_changes_the_file_size(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng, 48, 64)
    assert_ok(run("clean", src, "-o", tmp_path / "low.jpg", "--quality", "10", *model))
    assert_ok(run("clean", src, "-o", tmp_path / "high.jpg", "-q", "95", *model))
    assert (tmp_path / "low.jpg").stat().st_size < (tmp_path / "high.jpg").stat().st_size
    assert read(tmp_path / "low.jpg").shape == read(tmp_path / "high.jpg").shape == (48, 64, 3)


@pytest.mark.parametrize("quality", ["0", "101", "high"])
def test_bad_quality_is_a_usage_error(tmp_path: Path, rng: np.random.Generator, model: list[str], quality: str) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    assert_fails(run("clean", src, "-q", quality, *model), 2, "--quality", one_line=False)
    assert files_under(tmp_path) == {"rainy.png"}


# --- clean: what a round trip must keep --------------------------------------------------------


def test_rgba_png_keeps_its_alpha_exactly(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    bgra = rng.integers(0, 256, (H, W, 4), dtype=np.int64).astype(np.uint8)
    src = write(tmp_path / "rgba.png", bgra)
    assert_ok(run("clean", src, *model))
    out = read(tmp_path / "rgba_derained.png")
    assert out.shape == (H, W, 4)
    assert np.array_equal(out[..., 3], bgra[..., 3])


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_stays_16bit(tmp_path: Path, rng: np.random.Generator, model: list[str], ext: str) -> None:
    src = photo(tmp_path / f"deep{ext}", rng, dtype=np.uint16)
    assert_ok(run("clean", src, *model))
    out = read(tmp_path / f"deep_derained{ext}")
    assert out.dtype == np.uint16 and out.shape == (H, W, 3)
    assert (out % 257 != 0).any(), "the 16-bit output is 8-bit precision scaled up"
    assert out.max() > 255


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grayscale_png_stays_grayscale(tmp_path: Path, rng: np.random.Generator, model: list[str], dtype: type) -> None:
    gray = random_image(rng, H, W, dtype)[..., 0]
    src = write(tmp_path / "gray.png", gray)
    assert_ok(run("clean", src, *model))
    out = read(tmp_path / "gray_derained.png")
    assert out.shape == (H, W) and out.dtype == dtype


def test_exif_orientation_is_applied(tmp_path: Path, model: list[str]) -> None:
    stored = np.full((H, W, 3), 40, np.uint8)  # as stored: landscape, bright block top-left
    stored[:8, :16] = 220
    src = tmp_path / "rotated.jpg"
    src.write_bytes(_jpeg_with_exif(stored, 6))  # 6: rotate 90° clockwise to view
    assert_ok(run("clean", src, "--ext", "png", *model))
    out = read(tmp_path / "rotated_derained.png")
    assert out.shape == (W, H, 3), "the output is upright, portrait"
    upright = np.rot90(stored, -1).astype(float)  # block top-right
    wrong = np.rot90(stored, 1).astype(float)  # the same shape, block bottom-left
    assert np.abs(out - upright).mean() < np.abs(out - wrong).mean()


# --- clean: bad input ---------------------------------------------------------------------------


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated_png(path: Path) -> None:
    ok, data = cv2.imencode(".png", random_image(np.random.default_rng(1), 64, 64))
    path.write_bytes(data.tobytes()[: len(data) // 2])


def _text(path: Path) -> None:
    path.write_text("these are not the pixels you are looking for\n")


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("missing.png", None, "no such file"),
        ("empty.png", _empty, "file is empty"),
        ("cut.png", _truncated_png, "not a readable image"),
        ("notes.jpg", _text, "not a readable image"),
        ("anim.gif", _text, "unsupported file type '.gif'"),
    ],
)
def test_clean_bad_input(tmp_path: Path, model: list[str], name: str, make, reason: str) -> None:
    src = tmp_path / name
    if make:
        make(src)
    before = files_under(tmp_path)
    error = assert_fails(run("clean", src, *model), 1, reason)
    assert name in error
    assert files_under(tmp_path) == before, "no output left behind"


def test_clean_refuses_to_overwrite_the_input(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    before = src.read_bytes()
    for target in (src, tmp_path / "sub" / ".." / "rainy.png"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert_fails(run("clean", src, "-o", target, *model), 1, "refusing to overwrite the input")
        assert src.read_bytes() == before
    assert_fails(run("clean", src, "--suffix", "", *model), 1, "refusing to overwrite the input")
    (tmp_path / "link.png").symlink_to(src)
    assert_fails(run("clean", src, "-o", tmp_path / "link.png", *model), 1, "refusing to overwrite the input")
    assert src.read_bytes() == before
    assert files_under(tmp_path) == {"rainy.png", "link.png"}


def test_clean_refuses_an_overlay_that_would_overwrite_the_input(
    tmp_path: Path, rng: np.random.Generator, model: list[str]
) -> None:
    src = photo(tmp_path / "shot_overlay.png", rng)
    before = src.read_bytes()
    assert_fails(run("clean", src, "-o", tmp_path / "shot.png", "--attention", *model), 1, "refusing to overwrite")
    assert src.read_bytes() == before
    assert files_under(tmp_path) == {"shot_overlay.png"}, "nothing is written when the overlay is refused"


def test_clean_unwritable_output(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    (tmp_path / "afile.txt").write_text("a file, not a folder")
    error = assert_fails(run("clean", src, "-o", tmp_path / "afile.txt" / "out.png", *model), 1)
    assert "out.png" in error
    assert files_under(tmp_path) == {"rainy.png", "afile.txt"}


@pytest.mark.parametrize("name", ["out.gif", "out", "newdir/"])
def test_clean_unsupported_output_format_is_refused_before_the_model_loads(
    tmp_path: Path, rng: np.random.Generator, model: list[str], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    monkeypatch.setattr(importlib.import_module("derain.cli.clean"), "load_derainer", _must_not_load)
    assert_fails(run("clean", src, "-o", f"{tmp_path}/{name}", *model), 2, "name the image file to write", ".png")
    assert_fails(run("clean", src, "--suffix", "/sub", *model), 2, "--suffix '/sub'")
    assert files_under(tmp_path) == {"rainy.png"}


def _must_not_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model loaded before the command line was checked")


def test_clean_max_pixels(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    assert_fails(run("clean", src, "--max-pixels", "100", *model), 1, "--max-pixels", f"{W}x{H}")
    assert files_under(tmp_path) == {"rainy.png"}
    assert_ok(run("clean", src, "--max-pixels", str(H * W), *model))  # the limit itself is allowed
    assert_ok(run("clean", src, "-o", tmp_path / "b.png", "--max-pixels", "0", *model))  # 0: no limit


def test_clean_bad_max_pixels_is_a_usage_error(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    assert_fails(run("clean", src, "--max-pixels", "lots", *model), 2, "--max-pixels", one_line=False)
    assert_fails(run("clean", src, "--max-pixels", "-5", *model), 2, "--max-pixels", one_line=False)


def test_clean_working_size(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng, 48, 64)
    assert_ok(run("clean", src, "-o", tmp_path / "small.png", "--working-size", "32", *model))
    assert_ok(run("clean", src, "-o", tmp_path / "full.png", "--working-size", "full", *model))
    small, full = read(tmp_path / "small.png"), read(tmp_path / "full.png")
    assert small.shape == full.shape == (48, 64, 3)
    assert not np.array_equal(small, full)  # the network saw a 32×43 copy, then all 48×64 pixels
    for bad in ("8", "big"):
        assert_fails(run("clean", src, "--working-size", bad, *model), 2, "--working-size", one_line=False)


def test_clean_bad_weights(tmp_path: Path, rng: np.random.Generator) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    missing = tmp_path / "nope.safetensors"
    assert_fails(run("clean", src, "--weights", missing, "--device", "cpu"), 2, "weights file not found")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_text("not weights at all")
    assert_fails(run("clean", src, "--weights", garbage, "--device", "cpu"), 2, "garbage.safetensors")
    assert files_under(tmp_path) == {"rainy.png", "garbage.safetensors"}


@pytest.mark.parametrize(
    "options, reason",
    [
        (["--precision", "fp16"], "fp16"),
        (["--tile", "abc"], "tile"),
        (["--tile", "3"], "tile"),
        (["--device", "toaster"], "toaster"),
        (["--compile"], "on CUDA GPUs only, not on cpu"),
    ],
)
def test_clean_unusable_setup(
    tmp_path: Path, rng: np.random.Generator, tiny_weights: Path, options: list[str], reason: str
) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    assert_fails(run("clean", src, "--weights", tiny_weights, "--device", "cpu", *options), 2, reason)
    assert files_under(tmp_path) == {"rainy.png"}


def test_clean_tiling_options_work(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng, 72, 100)
    assert_ok(run("clean", src, "-o", tmp_path / "tiled.png", "--tile", "64", "--tile-overlap", "8", *model))
    assert_ok(run("clean", src, "-o", tmp_path / "whole.png", "--tile", "0", "--precision", "fp32", *model))
    assert read(tmp_path / "tiled.png").shape == read(tmp_path / "whole.png").shape == (72, 100, 3)


def test_clean_interrupted_exits_130(
    tmp_path: Path, rng: np.random.Generator, model: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("derain.cli.clean"), "clean_file", interrupted)
    src = photo(tmp_path / "rainy.png", rng)
    result = run("clean", src, *model)
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and "interrupted" in result.output
    assert files_under(tmp_path) == {"rainy.png"}


def test_paths_with_brackets_are_printed_as_they_are(
    tmp_path: Path, rng: np.random.Generator, model: list[str]
) -> None:
    src = photo(tmp_path / "[draft] rainy.png", rng)  # rich would read "[draft]" as a style tag
    result = run("clean", src, *model)
    assert_ok(result)
    assert "[draft] rainy_derained.png" in result.output


# --- batch --------------------------------------------------------------------------------------


def _tree(root: Path, rng: np.random.Generator) -> set[str]:
    """A nested folder of photos (plus things that are not photos); returns the photos' names."""
    photo(root / "a" / "1.png", rng)
    write(root / "a" / "b" / "2.jpg", random_image(rng, H, W))
    photo(root / "a" / "b" / "c" / "3.PNG", rng, 20, 28)
    (root / "a" / "notes.txt").write_text("not a photo")
    photo(root / "a" / ".hidden.png", rng)  # hidden files are skipped
    return {"a/1.png", "a/b/2.jpg", "a/b/c/3.PNG"}


def test_batch_mirrors_the_tree(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    names = _tree(tmp_path / "in", rng)
    result = run("batch", tmp_path / "in", "-o", tmp_path / "out", *model)
    assert_ok(result)
    assert "3 done, 0 skipped, 0 failed" in result.output
    assert files_under(tmp_path / "out") == names
    for name in names:
        assert read(tmp_path / "out" / name).shape == read(tmp_path / "in" / name).shape
    assert (tmp_path / "out" / "a" / "b" / "2.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    assert_no_temp_files(tmp_path / "out")


def test_batch_default_output_is_beside_the_input(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    names = _tree(tmp_path / "photos", rng)
    assert_ok(run("batch", tmp_path / "photos", *model))
    assert files_under(tmp_path / "photos_derained") == names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "photos_derained"]


def test_batch_of_the_current_folder(
    tmp_path: Path, rng: np.random.Generator, model: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = _tree(tmp_path / "photos", rng)
    monkeypatch.chdir(tmp_path / "photos")
    assert_ok(run("batch", ".", *model))
    assert files_under(tmp_path / "photos_derained") == names
    monkeypatch.chdir(tmp_path / "photos" / "a")
    assert_ok(run("batch", "..", "--overwrite", *model))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "photos_derained"]


def test_batch_resumes_and_overwrites(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    _tree(tmp_path / "in", rng)
    out = tmp_path / "out"
    assert_ok(run("batch", tmp_path / "in", "-o", out, *model))
    outputs = [p for p in out.rglob("*") if p.is_file()]
    for path in outputs:
        os.utime(path, ns=(0, 0))  # an old stamp: any rewrite shows
    (out / "a" / "b" / "2.jpg").unlink()  # as if interrupted before this one
    result = run("batch", tmp_path / "in", "-o", out, *model)
    assert_ok(result)
    assert "1 done, 2 skipped, 0 failed" in result.output
    assert [p.stat().st_mtime_ns for p in outputs if p.name != "2.jpg"] == [0, 0]
    assert (out / "a" / "b" / "2.jpg").stat().st_mtime_ns != 0
    result = run("batch", tmp_path / "in", "-o", out, *model)
    assert_ok(result)
    assert "0 done, 3 skipped, 0 failed" in result.output
    result = run("batch", tmp_path / "in", "-o", out, "--overwrite", *model)
    assert_ok(result)
    assert "3 done, 0 skipped, 0 failed" in result.output
    assert all(p.stat().st_mtime_ns != 0 for p in outputs)


def test_batch_output_inside_the_input_is_not_fed_back(
    tmp_path: Path, rng: np.random.Generator, model: list[str]
) -> None:
    names = _tree(tmp_path / "in", rng)
    out = tmp_path / "in" / "out"
    assert_ok(run("batch", tmp_path / "in", "-o", out, *model))
    result = run("batch", tmp_path / "in", "-o", out, *model)
    assert_ok(result)
    assert "0 done, 3 skipped, 0 failed" in result.output
    assert files_under(out) == names


def test_batch_into_a_folder_that_holds_the_input(
    tmp_path: Path, rng: np.random.Generator, model: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = _tree(tmp_path / "in", rng)
    monkeypatch.chdir(tmp_path)
    result = run("batch", "in", "-o", ".", *model)
    assert_ok(result)
    assert "3 done, 0 skipped, 0 failed" in result.output
    assert {name for name in names if (tmp_path / name).is_file()} == names


def test_batch_one_bad_file_does_not_stop_it(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    names = _tree(tmp_path / "in", rng)
    _truncated_png(tmp_path / "in" / "a" / "b" / "[draft] broken.png")
    result = run("batch", tmp_path / "in", "-o", tmp_path / "out", *model)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert "3 done, 0 skipped, 1 failed" in result.output
    failed = [line for line in result.output.splitlines() if "[draft] broken.png" in line]
    assert len(failed) == 1 and "not a readable image" in failed[0]
    assert failed[0].count("broken.png") == 1, "the path is said once"
    assert files_under(tmp_path / "out") == names
    assert_no_temp_files(tmp_path / "out")
    # a rerun skips the good ones and still reports the bad one
    result = run("batch", tmp_path / "in", "-o", tmp_path / "out", *model)
    assert result.exit_code == 1
    assert "0 done, 3 skipped, 1 failed" in result.output


def test_batch_unwritable_output_is_reported(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    photo(tmp_path / "in" / "1.png", rng)
    photo(tmp_path / "in" / "sub" / "2.png", rng)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("a file where the sub-folder should go")
    result = run("batch", tmp_path / "in", "-o", tmp_path / "out", *model)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "1 done, 0 skipped, 1 failed" in result.output
    assert files_under(tmp_path / "out") == {"1.png", "sub"}


def test_batch_ext(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    _tree(tmp_path / "in", rng)
    assert_ok(run("batch", tmp_path / "in", "-o", tmp_path / "out", "--ext", "png", *model))
    assert files_under(tmp_path / "out") == {"a/1.png", "a/b/2.png", "a/b/c/3.png"}
    assert (tmp_path / "out" / "a" / "b" / "2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run("batch", tmp_path / "in", "-o", tmp_path / "out", "--ext", "png", *model)
    assert "0 done, 3 skipped" in result.output  # resuming looks for the new names


def test_batch_no_images(tmp_path: Path, model: list[str]) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "readme.txt").write_text("nothing to see")
    assert_fails(run("batch", tmp_path / "in", "-o", tmp_path / "out", *model), 1, "no images found")
    assert not (tmp_path / "out").exists()


def test_batch_missing_folder(tmp_path: Path, model: list[str]) -> None:
    assert_fails(run("batch", tmp_path / "nope", *model), 1, "no such folder")
    assert list(tmp_path.iterdir()) == []


def test_batch_of_a_file_points_to_clean(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "small.jpg", rng)
    assert_fails(run("batch", src, *model), 1, "small.jpg: is a file, not a folder", f"`derain clean {src}`")
    assert list(tmp_path.iterdir()) == [src]


def test_batch_refuses_its_input_as_output(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    _tree(tmp_path / "in", rng)
    before = digest(tmp_path / "in")
    for out in (tmp_path / "in", tmp_path / "in" / "a" / ".."):
        assert_fails(run("batch", tmp_path / "in", "-o", out, *model), 2, "must differ from the input")
    assert digest(tmp_path / "in") == before


def test_batch_bad_weights(tmp_path: Path, rng: np.random.Generator) -> None:
    _tree(tmp_path / "in", rng)
    result = run("batch", tmp_path / "in", "-o", tmp_path / "out", "--weights", tmp_path / "no.pt", "--device", "cpu")
    assert_fails(result, 2, "weights file not found")
    out = tmp_path / "out"
    assert not out.exists() or not any(out.rglob("*")), "no output written"


def test_batch_interrupted_exits_130_and_keeps_finished_work(
    tmp_path: Path, rng: np.random.Generator, model: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original = Derainer.run

    def run_then_interrupt(self: Derainer, image: np.ndarray, **kwargs: bool) -> Restoration:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, image, **kwargs)

    monkeypatch.setattr(Derainer, "run", run_then_interrupt)
    _tree(tmp_path / "in", rng)
    result = run("batch", tmp_path / "in", "-o", tmp_path / "out", *model)
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "1 done" in result.output
    assert files_under(tmp_path / "out") == {"a/1.png"}
    assert_no_temp_files(tmp_path / "out")


# --- attention ----------------------------------------------------------------------------------


def test_attention_maps(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.jpg", rng)
    result = run("attention", src, "-o", tmp_path / "maps", *model)
    assert_ok(result)
    assert files_under(tmp_path / "maps") == {"rainy_att1.png", "rainy_att2.png", "rainy_overlay.png"}
    for name in ("rainy_att1.png", "rainy_att2.png"):
        att = read(tmp_path / "maps" / name)
        assert att.shape == (H, W) and att.dtype == np.uint8
    overlay = read(tmp_path / "maps" / "rainy_overlay.png")
    assert overlay.shape == (H, W, 3) and overlay.dtype == np.uint8
    assert "2 maps" in result.output


def test_attention_defaults_to_the_input_folder(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng, 20, 36)
    assert_ok(run("attention", src, *model))
    assert files_under(tmp_path) == {"rainy.png", "rainy_att1.png", "rainy_att2.png", "rainy_overlay.png"}
    assert read(tmp_path / "rainy_att2.png").shape == (20, 36)


def test_attention_bad_input(tmp_path: Path, model: list[str]) -> None:
    assert_fails(run("attention", tmp_path / "nope.png", "-o", tmp_path / "maps", *model), 1, "no such file")
    assert_fails(run("attention", tmp_path, *model), 1, "is a folder", "--attention`")
    _text(tmp_path / "notes.png")
    assert_fails(run("attention", tmp_path / "notes.png", "-o", tmp_path / "maps", *model), 1, "not a readable image")
    assert files_under(tmp_path) == {"notes.png"}


def test_attention_files_checks_its_folder_before_the_model_runs(
    tmp_path: Path, rng: np.random.Generator, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from derain.files import attention_files
    from derain.imageio import ImageError

    src = photo(tmp_path / "rainy.png", rng)
    derainer = Derainer(tiny_weights, device="cpu")
    monkeypatch.setattr(derainer, "attention", _must_not_load)
    with pytest.raises(ImageError, match="nodir: no such folder"):
        attention_files(derainer, src, tmp_path / "nodir")


def test_attention_max_pixels(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    assert_fails(run("attention", src, "--max-pixels", "100", *model), 1, "--max-pixels")
    assert files_under(tmp_path) == {"rainy.png"}


def test_attention_output_folder_that_is_a_file(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    src = photo(tmp_path / "rainy.png", rng)
    (tmp_path / "afile.txt").write_text("a file")
    assert_fails(run("attention", src, "-o", tmp_path / "afile.txt" / "maps", *model), 1, "cannot create this folder")


# --- weights ------------------------------------------------------------------------------------


def test_weights_lists_the_shipped_manifest() -> None:
    manifest = Path(__file__).resolve().parent.parent / "weights" / "manifest.json"
    if not manifest.is_file():
        pytest.skip("no shipped weights in this checkout (weights/manifest.json)")
    default = json.loads(manifest.read_text())["default"]
    result = run("weights")
    assert_ok(result)
    assert default in result.output and "(default)" in result.output


def test_weights_lists_a_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = {
        "default": "alpha",
        "files": {
            "alpha": {"file": "a.safetensors", "size": 1_500_000, "sha256": "ab" * 32, "trained_on": "synth"},
            "beta": {"file": "b.safetensors", "size": 2_000_000, "sha256": "cd" * 32},
        },
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr("derain.weights.shipped_dir", lambda: tmp_path)
    monkeypatch.setattr(importlib.import_module("derain.cli.weights_cmd"), "shipped_dir", lambda: tmp_path)
    result = CliRunner().invoke(main, ["weights"], env={"COLUMNS": "80"})
    assert_ok(result)
    assert "alpha (default)" in result.output and "beta" in result.output and "beta (default)" not in result.output
    assert "1.5 MB" in result.output and "2.0 MB" in result.output
    assert "ab" * 32 in result.output  # the checksum on one line at 80 columns, to copy
    listed = json.loads(CliRunner().invoke(main, ["weights", "--json"]).output)
    assert [(e["name"], e["default"], e["sha256"]) for e in listed] == [
        ("alpha", True, "ab" * 32),
        ("beta", False, "cd" * 32),
    ]


def test_weights_without_a_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("derain.weights.shipped_dir", lambda: tmp_path)
    assert_fails(run("weights"), 2, "cannot read the weights manifest")


# --- synth --------------------------------------------------------------------------------------


def test_synth_writes_the_raindrop_layout_reproducibly(tmp_path: Path, rng: np.random.Generator) -> None:
    photo(tmp_path / "clean" / "a.png", rng, 72, 96)
    photo(tmp_path / "clean" / "sub" / "b.jpg", rng, 80, 80)
    args = ["--count", "3", "--size", "64x48", "--seed", "1"]
    assert_ok(run("synth", tmp_path / "clean", "-o", tmp_path / "one", *args))
    layout = (("data", "rain"), ("gt", "clean"), ("mask", "mask"))
    expected = {f"{folder}/{i}_{kind}.png" for i in range(3) for folder, kind in layout}
    assert files_under(tmp_path / "one") == expected
    for i in range(3):
        assert read(tmp_path / "one" / "data" / f"{i}_rain.png").shape == (48, 64, 3)
        assert read(tmp_path / "one" / "gt" / f"{i}_clean.png").shape == (48, 64, 3)
        mask = read(tmp_path / "one" / "mask" / f"{i}_mask.png")
        assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255}
    assert_ok(run("synth", tmp_path / "clean", "-o", tmp_path / "two", *args))
    assert digest(tmp_path / "one") == digest(tmp_path / "two")
    assert_ok(run("synth", tmp_path / "clean", "-o", tmp_path / "three", *args[:-1], "2"))
    assert digest(tmp_path / "one") != digest(tmp_path / "three")


def test_synth_preview_writes_one_contact_sheet(tmp_path: Path, rng: np.random.Generator) -> None:
    photo(tmp_path / "clean" / "a.png", rng, 72, 96)
    sheet = tmp_path / "look" / "renders.png"
    assert_ok(run("synth", tmp_path / "clean", "-o", sheet, "--preview", "6", "--size", "64x48"))
    assert read(sheet).shape == (2 * 270, 4 * 360, 3), "6 thumbnails, 4 to a row"
    assert files_under(tmp_path / "look") == {"renders.png"}
    result = run("synth", tmp_path / "clean", "-o", tmp_path / "renders.txt", "--preview", "2")
    assert_fails(result, 2, ".png or .jpg", one_line=False)


def test_synth_preview_beside_real_photos_is_a_blind_test_with_a_key(tmp_path: Path, rng: np.random.Generator) -> None:
    photo(tmp_path / "clean" / "a.png", rng, 72, 96)
    for name in ("x.png", "y.jpg", "z.png"):
        photo(tmp_path / "real" / name, rng, 50, 120)  # another shape: cropped to the renders' size
    sheet = tmp_path / "blind.png"
    result = run(
        "synth", tmp_path / "clean", "-o", sheet, "--preview", "2", "--size", "64x48", "--beside", tmp_path / "real"
    )
    assert_ok(result)
    assert read(sheet).shape == (270, 4 * 360, 3), "2 renders and 2 of the 3 real photos in one row"
    header, *tiles = (tmp_path / "blind.png.key.txt").read_text().splitlines()
    assert "renderer" in header and [t.split(": ")[0] for t in tiles] == ["1", "2", "3", "4"]
    names = [t.split(": ")[1] for t in tiles]
    assert names.count("render") == 2 and set(names) - {"render"} <= {"x.png", "y.jpg", "z.png"}
    (tmp_path / "empty").mkdir()
    empty = run("synth", tmp_path / "clean", "-o", sheet, "--preview", "2", "--beside", tmp_path / "empty")
    assert_fails(empty, 1, "no photos found")
    no_preview = run("synth", tmp_path / "clean", "-o", tmp_path / "set", "--beside", tmp_path / "real")
    assert_fails(no_preview, 2, "--preview", one_line=False)


def test_synth_set_changes_the_renderer_and_rejects_unknown_names(tmp_path: Path, rng: np.random.Generator) -> None:
    photo(tmp_path / "clean" / "a.png", rng, 72, 96)
    args = ["--count", "2", "--size", "64x48"]
    assert_ok(run("synth", tmp_path / "clean", "-o", tmp_path / "plain", *args))
    assert_ok(run("synth", tmp_path / "clean", "-o", tmp_path / "dry", *args, "--set", "empty_prob=1"))
    for i in range(2):
        assert np.array_equal(
            read(tmp_path / "dry" / "data" / f"{i}_rain.png"), read(tmp_path / "dry" / "gt" / f"{i}_clean.png")
        )
    assert digest(tmp_path / "plain") != digest(tmp_path / "dry")
    for bad in ("no_such=1", "coverage=0.5", "night_prob=often", "cameras=1"):
        assert_fails(
            run("synth", tmp_path / "clean", "-o", tmp_path / "bad", *args, "--set", bad), 2, "--set", one_line=False
        )
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("size", ["64by48", "64x", "8x8", "64x48x3"])
def test_synth_bad_size(tmp_path: Path, rng: np.random.Generator, size: str) -> None:
    photo(tmp_path / "clean" / "a.png", rng)
    assert_fails(run("synth", tmp_path / "clean", "-o", tmp_path / "out", "--size", size), 2, "--size", one_line=False)
    assert not (tmp_path / "out").exists()


def test_synth_without_photos(tmp_path: Path) -> None:
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "readme.txt").write_text("no photos here")
    assert_fails(run("synth", tmp_path / "clean", "-o", tmp_path / "out", "--count", "2"), 1, "no photos found")
    assert_fails(run("synth", tmp_path / "nope", "-o", tmp_path / "out", "--count", "2"), 1, "no photos found")
    assert not (tmp_path / "out").exists()


def test_synth_into_a_file(tmp_path: Path, rng: np.random.Generator) -> None:
    photo(tmp_path / "clean" / "a.png", rng)
    taken = photo(tmp_path / "small.jpg", rng)
    assert_fails(run("synth", tmp_path / "clean", "-o", taken, "--count", "1"), 1, "small.jpg: is a file")
    assert_fails(
        run("synth", tmp_path / "clean", "-o", taken / "set", "--count", "1"), 1, "cannot create the dataset folder"
    )


def test_synth_unreadable_photo(tmp_path: Path) -> None:
    (tmp_path / "clean").mkdir()
    _text(tmp_path / "clean" / "fake.jpg")
    result = run("synth", tmp_path / "clean", "-o", tmp_path / "out", "--count", "1")
    assert_fails(result, 1, "fake.jpg: not a readable image", one_line=False)  # after the progress bar


# --- eval ---------------------------------------------------------------------------------------


def _pairs(root: Path, rng: np.random.Generator, count: int = 3) -> None:
    """Raindrop layout: data/<i>_rain.png, gt/<i>_clean.png, and pred/<i>_derained.png closer to the truth."""

    def noisy(clean: np.ndarray, amount: int) -> np.ndarray:
        return np.clip(clean + rng.integers(-amount, amount, clean.shape), 0, 255).astype(np.uint8)

    for i in range(count):
        clean = random_image(rng, H, W).astype(int)
        write(root / "gt" / f"{i}_clean.png", clean.astype(np.uint8))
        write(root / "data" / f"{i}_rain.png", noisy(clean, 40))
        write(root / "pred" / f"{i}_derained.png", noisy(clean, 6))


def test_eval_predictions(tmp_path: Path, rng: np.random.Generator) -> None:
    _pairs(tmp_path / "set", rng)
    result = run("eval", tmp_path / "set", "--pred", tmp_path / "set" / "pred", "--json", tmp_path / "scores.json")
    assert_ok(result)
    scores = json.loads((tmp_path / "scores.json").read_text())
    expected = evaluate(tmp_path / "set", pred_dir=tmp_path / "set" / "pred")
    assert scores["mean_psnr"] == pytest.approx(expected.mean_psnr)
    assert scores["mean_ssim"] == pytest.approx(expected.mean_ssim)
    assert [s["name"] for s in scores["images"]] == ["0_rain.png", "1_rain.png", "2_rain.png"]
    assert all({"name", "psnr", "ssim"} <= set(s) for s in scores["images"])
    assert scores["mean_psnr"] > scores["input_mean_psnr"]  # the predictions are the better images
    assert "3 images" in result.output and f"{expected.mean_psnr:.2f}" in result.output


def test_eval_json_is_strict_when_predictions_equal_the_truth(tmp_path: Path, rng: np.random.Generator) -> None:
    _pairs(tmp_path / "set", rng, count=2)
    result = run("eval", tmp_path / "set", "--pred", tmp_path / "set" / "gt", "--json", tmp_path / "scores.json")
    assert_ok(result)

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    scores = json.loads((tmp_path / "scores.json").read_text(), parse_constant=refuse)
    assert scores["mean_psnr"] is None and all(s["psnr"] is None for s in scores["images"])
    assert scores["mean_ssim"] == pytest.approx(1.0)


def test_eval_of_drop_free_photos_only_reports_their_change_and_no_empty_mean(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    _pairs(tmp_path / "set", rng, count=2)
    for gt in (tmp_path / "set" / "gt").iterdir():  # drop-free: each rainy photo is its clean twin
        shutil.copy(gt, tmp_path / "set" / "data" / gt.name.replace("_clean", "_rain"))
    result = run("eval", tmp_path / "set", "--pred", tmp_path / "set" / "pred")
    assert_ok(result)
    assert "2 drop-free image(s): output" in result.output
    assert "nan" not in result.output and "averaged" not in result.output


def test_eval_runs_the_model(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    _pairs(tmp_path / "set", rng, count=2)
    result = run("eval", tmp_path / "set", "--json", tmp_path / "new" / "scores.json", *model)
    assert_ok(result)
    scores = json.loads((tmp_path / "new" / "scores.json").read_text())  # its folder was made
    assert len(scores["images"]) == 2
    assert all(np.isfinite(s["psnr"]) and 0 < s["ssim"] <= 1 for s in scores["images"])


def test_eval_scores_attention_against_masks(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    _pairs(tmp_path / "set", rng, count=2)
    for i in range(2):
        write(tmp_path / "set" / "mask" / f"{i}_mask.png", np.full((H, W), 255 * i, np.uint8))
    result = run("eval", tmp_path / "set", "--json", tmp_path / "scores.json", *model)
    assert_ok(result)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert 0 <= scores["attention_iou"] <= 1 and all(0 <= s["attention_iou"] <= 1 for s in scores["images"])
    assert "attention IoU" in result.output and f"{scores['attention_iou']:.3f}" in result.output


def test_eval_mask_of_the_wrong_size(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    _pairs(tmp_path / "set", rng, count=1)
    write(tmp_path / "set" / "mask" / "0_mask.png", np.zeros((H + 1, W), np.uint8))
    assert_fails(run("eval", tmp_path / "set", *model), 1, "0_mask.png: mask is", "the image is")


def test_eval_size_mismatch_names_the_files(tmp_path: Path, rng: np.random.Generator) -> None:
    _pairs(tmp_path / "set", rng, count=2)
    photo(tmp_path / "set" / "pred" / "1_derained.png", rng, H // 2, W // 2)
    result = run("eval", tmp_path / "set", "--pred", tmp_path / "set" / "pred")
    assert_fails(result, 1, f"{tmp_path / 'set' / 'pred' / '1_derained.png'} vs ", "1_clean.png: size mismatch")


def test_eval_missing_prediction(tmp_path: Path, rng: np.random.Generator) -> None:
    _pairs(tmp_path / "set", rng)
    (tmp_path / "set" / "pred" / "1_derained.png").unlink()
    result = run("eval", tmp_path / "set", "--pred", tmp_path / "set" / "pred", "--json", tmp_path / "scores.json")
    assert_fails(result, 1, "no prediction for pair(s) 1")
    assert not (tmp_path / "scores.json").exists()


def test_eval_bad_json_path_or_weights_with_pred_fail_before_scoring(
    tmp_path: Path, rng: np.random.Generator, model: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _pairs(tmp_path / "set", rng, count=1)
    monkeypatch.setattr(importlib.import_module("derain.cli.eval_cmd"), "load_derainer", _must_not_load)
    (tmp_path / "afile").write_text("a file")
    assert_fails(run("eval", tmp_path / "set", "--json", tmp_path / "afile" / "s.json", *model), 1, "cannot create")
    result = run("eval", tmp_path / "set", "--pred", tmp_path / "set" / "pred", "-w", "derain-v14")
    assert_fails(result, 2, "takes no --weights", one_line=False)


def test_eval_folder_without_pairs(tmp_path: Path, rng: np.random.Generator, model: list[str]) -> None:
    photo(tmp_path / "set" / "loose.png", rng)
    assert_fails(run("eval", tmp_path / "set", *model), 1, "no pairs found")
    assert_fails(run("eval", tmp_path / "nope", *model), 1, "no such folder")
    assert_fails(run("eval", tmp_path / "set", "--pred", tmp_path / "nope"), 1, "nope: no such folder")


# --- train (the tiny architecture comes in through --init) ---------------------------------------


def test_train_from_weights_then_warm_restart(tmp_path: Path, rng: np.random.Generator, tiny_weights: Path) -> None:
    _pairs(tmp_path / "set", rng, count=2)
    options = ["--steps", "2", "--batch", "1", "--patch", "16", "--warmup", "0", "--val", tmp_path / "set"]
    weighted = ["--identity", "0.5", "--identity-map-weight", "4", "--val-images", "1", "--val-crop", "16"]
    first = run("train", tmp_path / "set", "-o", tmp_path / "run", "--init", tiny_weights, *options, *weighted)
    assert_ok(first)
    assert "trained to step 2" in first.stderr and "val PSNR" in first.stderr and "worst" in first.stderr
    meta = Derainer(tmp_path / "run" / "final.safetensors", device="cpu").weights_info.meta
    assert meta["train_config"]["identity_map_weight"] == 4 and meta["train_config"]["identity_fraction"] == 0.5
    assert (meta["train_config"]["val_images"], meta["train_config"]["val_crop"]) == (1, 16)
    restart = ["--init", tmp_path / "run" / "checkpoint.pt", "--attention-steps", "3"]
    again = run("train", tmp_path / "set", "-o", tmp_path / "run2", *restart, *options)
    assert_ok(again)
    assert "step 2/2" in again.stderr, "a new schedule from step 0, not a resume at step 2"
    derainer = Derainer(tmp_path / "run2" / "final.safetensors", device="cpu")
    weights = derainer.weights_info
    assert weights.meta["trained_steps"] == 2 and weights.config.rnn_width == 4
    assert weights.config.steps == 3 and len(derainer.attention(np.zeros((8, 8, 3), np.uint8))) == 3


def test_train_unpaired_adapts_weights_to_real_photos(
    tmp_path: Path, rng: np.random.Generator, tiny_weights: Path
) -> None:
    _pairs(tmp_path / "set", rng, count=1)
    photo(tmp_path / "mine" / "frame_1.png", rng)
    options = ["--steps", "2", "--batch", "1", "--patch", "16", "--warmup", "0", "--init", tiny_weights]
    result = run("train", tmp_path / "set", "-o", tmp_path / "run", "--unpaired", tmp_path / "mine", *options)
    assert_ok(result)
    assert "gan_real" in result.stderr, "the outputs on the real photos meet the discriminator"
    meta = Derainer(tmp_path / "run" / "final.safetensors", device="cpu").weights_info.meta
    assert meta["train_config"]["gan_weight"] == 0.01 and meta["train_config"]["unpaired_dir"].endswith("mine")
    (tmp_path / "none").mkdir()
    assert_fails(run("train", tmp_path / "set", "-o", tmp_path / "r2", "--unpaired", tmp_path / "none"), 1, "no photos")
    assert not (tmp_path / "r2").exists()


def test_train_interrupted_says_how_to_resume(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("derain.cli.train_cmd"), "train", interrupted)
    _pairs(tmp_path / "set", rng, count=1)
    result = run("train", tmp_path / "set", "-o", tmp_path / "run")
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert "the same command resumes from the last checkpoint (saved every 100 steps)" in result.output
    assert_fails(run("train", tmp_path / "set", "-o", tmp_path / "run", "--lr", "0"), 2, "--lr", one_line=False)


def test_train_frozen_attention_needs_trained_weights(
    tmp_path: Path, rng: np.random.Generator, tiny_weights: Path
) -> None:
    _pairs(tmp_path / "set", rng, count=1)
    options = ["--steps", "1", "--batch", "1", "--patch", "16", "--freeze-attention"]
    assert_ok(run("train", tmp_path / "set", "-o", tmp_path / "run", "--init", tiny_weights, *options))
    meta = Derainer(tmp_path / "run" / "final.safetensors", device="cpu").weights_info.meta
    assert meta["train_config"]["freeze_attention"] is True
    assert_fails(run("train", tmp_path / "set", "-o", tmp_path / "r2", *options), 2, "add --init")
    assert not (tmp_path / "r2").exists()


def test_train_missing_data(tmp_path: Path) -> None:
    assert_fails(run("train", tmp_path / "nope", "-o", tmp_path / "run"), 1, "no such folder")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("init, reason", [("nope.pt", "weights file not found"), ("nope", "no shipped weights")])
def test_train_unusable_init_weights_is_a_setup_error(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, init: str, reason: str
) -> None:
    _pairs(tmp_path / "set", rng, count=1)
    monkeypatch.chdir(tmp_path)
    result = run("train", tmp_path / "set", "-o", tmp_path / "run", "--init", init)
    assert_fails(result, 2, reason)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device, reason", [("toaster", "unknown device"), ("cuda:99", "CUDA")])
def test_train_unusable_device_is_a_setup_error(
    tmp_path: Path, rng: np.random.Generator, device: str, reason: str
) -> None:
    _pairs(tmp_path / "set", rng, count=1)
    assert_fails(run("train", tmp_path / "set", "-o", tmp_path / "run", "--device", device), 2, reason)
    assert not (tmp_path / "run").exists()


# --- bench --------------------------------------------------------------------------------------


def test_bench_json(model: list[str]) -> None:
    result = run("bench", "--size", "64x48", "--repeat", "1", "--json", *model)
    assert_ok(result)
    report = json.loads(result.stdout)
    assert (report["width"], report["height"]) == (64, 48)
    assert len(report["rows"]) == 2 and all(row["seconds"] > 0 for row in report["rows"])
    assert report["speedup"] > 0 and report["flops_per_mp"] > 0


def test_bench_table_without_reference(model: list[str]) -> None:
    result = run("bench", "--size", "32x32", "--repeat", "1", "--no-reference", *model)
    assert_ok(result)
    assert "GFLOP per megapixel" in result.stdout and "speed-up" not in result.stdout


@pytest.mark.parametrize("options, reason", [(["--precision", "fp16"], "fp16"), (["--compile"], "leave out --compile")])
def test_bench_bad_setup(tiny_weights: Path, options: list[str], reason: str) -> None:
    assert_fails(run("bench", "--size", "64x48", "--weights", tiny_weights, "--device", "cpu", *options), 2, reason)


# --- as a real process --------------------------------------------------------------------------


def _derain_executable() -> str:
    found = shutil.which("derain", path=str(Path(sys.executable).parent)) or shutil.which("derain")
    if found is None:
        pytest.skip("the derain entry point is not installed")
    return found


def test_entry_point_version() -> None:
    proc = subprocess.run([_derain_executable(), "--version"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"derain, version {derain.__version__}"


def test_entry_point_error_is_one_line_on_stderr(tmp_path: Path, tiny_weights: Path) -> None:
    proc = subprocess.run(
        [_derain_executable(), "clean", str(tmp_path / "nope.jpg"), "--weights", str(tiny_weights), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"Error: {tmp_path / 'nope.jpg'}: no such file"]


def test_batch_reports_outputs_that_would_collide(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    image = np.zeros((24, 32, 3), np.uint8)
    cv2.imwrite(str(src / "a.jpg"), image)
    cv2.imwrite(str(src / "a.png"), image)
    result = CliRunner().invoke(
        main,
        [
            "batch",
            str(src),
            "-o",
            str(tmp_path / "out"),
            "--ext",
            "png",
            "--weights",
            str(tiny_weights),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1
    assert "already taken" in result.output
    assert (tmp_path / "out" / "a.png").is_file()


def test_no_gate_gives_the_networks_raw_output(tiny_weights, tmp_path, rng):
    image = random_image(rng, 48, 64)
    cv2.imwrite(str(tmp_path / "x.png"), image[..., ::-1])
    written = []
    for flag, gate in (("--gate", True), ("--no-gate", False)):
        out = tmp_path / f"{flag}.png"
        result = run("clean", tmp_path / "x.png", "-o", out, "--weights", tiny_weights, "--precision", "fp32", flag)
        assert result.exit_code == 0, result.output
        written.append(cv2.imread(str(out))[..., ::-1])
        expected = Derainer(tiny_weights, device="cpu", precision="fp32", gate=gate).clean(image)
        assert np.array_equal(written[-1], expected), flag
    assert not np.array_equal(*written), "the gate kept some of the input"
