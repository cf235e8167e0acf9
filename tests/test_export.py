"""derain export: the ONNX graph matches the engine in onnxruntime, at any size, in RGB."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from derain.cli import main
from derain.engine import Derainer
from derain.export import export_onnx
from derain.weights import save_weights

from .conftest import random_image, tiny_model

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="derain")


@pytest.fixture(scope="module")
def bgr_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny weights that, like the official gen.pkl, expect BGR."""
    path = tmp_path_factory.mktemp("bgr") / "tiny_bgr.safetensors"
    return save_weights(tiny_model(seed=1), path, channel_order="BGR")


def session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("which", ["rgb", "bgr"])
def test_two_sizes_through_one_file_match_the_engine(
    tiny_weights: Path, bgr_weights: Path, tmp_path: Path, rng: np.random.Generator, which: str
) -> None:
    weights = tiny_weights if which == "rgb" else bgr_weights
    path = tmp_path / "model.onnx"
    export_onnx(path, weights)
    model = session(path)
    derainer = Derainer(weights, device="cpu", precision="fp32", tile=0, gate=False)
    for height, width in ((36, 52), (48, 28)):
        images = [random_image(rng, height, width) for _ in range(2)]
        batch = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255
        derained, attention = model.run(None, {"image": batch})
        assert derained.shape == (2, 3, height, width) and attention.shape == (2, 2, height, width)
        for k, image in enumerate(images):
            expected = derainer.run(image, with_attention=True)
            ours = np.rint(derained[k].transpose(1, 2, 0) * 255)
            assert np.abs(ours - expected.image).max() <= 1  # within 1/255, RGB whatever the weights' order
            assert np.abs(attention[k] - np.stack(expected.attention)).max() <= 1 / 255


def test_odd_size_padded_as_the_readme_says_matches_the_engine(
    bgr_weights: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(path, bgr_weights)
    image = random_image(rng, 37, 43)  # pads of 3 and 1: the engine reflect-pads too
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")
    derained, _ = session(path).run(None, {"image": padded.transpose(2, 0, 1)[None].astype(np.float32) / 255})
    ours = (derained[0].transpose(1, 2, 0)[:h, :w] * 255).round()
    expected = Derainer(bgr_weights, device="cpu", precision="fp32", tile=0, gate=False).clean(image)
    assert np.abs(ours - expected).max() <= 1


def test_metadata_and_steps(bgr_weights: Path, tmp_path: Path) -> None:
    path = tmp_path / "one_step.onnx"
    export_onnx(path, bgr_weights, steps=1)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["input_channel_order"] == "RGB" and props["weights_channel_order"] == "BGR"
    assert props["steps"] == "1" and props["weights"] == "tiny_bgr.safetensors"
    _, attention = session(path).run(None, {"image": np.zeros((1, 3, 16, 16), np.float32)})
    assert attention.shape == (1, 1, 16, 16)


def test_cli_writes_the_file(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub.onnx"
    result = run("export", out, "--weights", tiny_weights, "--steps", "3")
    assert result.exit_code == 0, result.output
    assert "3 steps" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["sub.onnx"]  # no temp file left behind
    onnx.checker.check_model(str(out))


def test_cli_bad_weights_is_one_line(tmp_path: Path) -> None:
    result = run("export", tmp_path / "m.onnx", "--weights", tmp_path / "missing.safetensors")
    assert result.exit_code == 2 and "weights file not found" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m.onnx").exists()


def test_cli_writes_only_onnx_files(tiny_weights: Path, tmp_path: Path) -> None:
    photo = tmp_path / "rainy.jpg"
    photo.write_bytes(b"a photo")
    result = run("export", photo, "--weights", tiny_weights)
    assert result.exit_code == 2 and "must end in .onnx" in result.output, result.output
    assert photo.read_bytes() == b"a photo"


def test_cli_without_the_extra_gives_the_hint(tiny_weights: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = run("export", tmp_path / "m.onnx", "--weights", tiny_weights)
    assert result.exit_code == 2 and 'pip install "derain[export]"' in result.output


def test_help_teaches_with_an_example() -> None:
    assert "  export " in run("--help").output
    result = run("export", "--help")
    assert result.exit_code == 0 and "Example" in result.output and "RGB" in result.output
