"""The speed features: the in-process allocator setting, --steps, and bench's report."""

from __future__ import annotations

import copy
import functools
import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from derain import allocator, postops
from derain.cli import main
from derain.engine import MAX_STEPS, Derainer
from derain.model import ConvLSTMCell, Generator, ResidualBlock, conv_relu
from derain.postops import FusedConvLSTMCell, ShortcutAdd, fuse_for_cpu
from derain.weights import load_weights

from .conftest import random_image, tiny_model


class FakeLibc:
    def __init__(self, accepts: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.accepts = accepts

    def mallopt(self, param, value) -> int:
        self.calls.append((param.value, value.value))
        return self.accepts


@pytest.fixture
def fresh_allocator(monkeypatch: pytest.MonkeyPatch):
    """keep_freed_memory as if this process had never called it (and again afterwards)."""
    allocator.keep_freed_memory.cache_clear()
    yield monkeypatch
    allocator.keep_freed_memory.cache_clear()


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="derain")


# --- allocator ----------------------------------------------------------------------------------


def test_allocator_setting_is_applied_once_per_process(fresh_allocator, tiny_weights: Path) -> None:
    libc = FakeLibc()
    fresh_allocator.setattr(allocator, "_glibc", lambda: libc)
    for _ in range(2):
        Derainer(tiny_weights, device="cpu")
    assert allocator.keep_freed_memory() is True
    assert libc.calls == [(p, v) for p, v in allocator.SETTINGS]


def test_a_refused_setting_is_reported(fresh_allocator) -> None:
    fresh_allocator.setattr(allocator, "_glibc", lambda: FakeLibc(accepts=0))
    assert allocator.keep_freed_memory() is False


def test_no_glibc_is_harmless(fresh_allocator, tiny_weights: Path, rng: np.random.Generator) -> None:
    fresh_allocator.setattr(sys, "platform", "darwin")
    assert allocator._glibc() is None
    assert allocator.keep_freed_memory() is False
    image = random_image(rng, 20, 28)
    assert Derainer(tiny_weights, device="cpu").clean(image).shape == image.shape


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_glibc_accepts_the_settings(fresh_allocator) -> None:
    if allocator._glibc() is None:
        pytest.skip("not glibc")
    assert allocator.keep_freed_memory() is True


# --- steps --------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [0, -1, MAX_STEPS + 1])
def test_steps_out_of_bounds_are_refused(tiny_weights: Path, steps: int) -> None:
    with pytest.raises(ValueError, match="steps must be between 1 and"):
        Derainer(tiny_weights, device="cpu", steps=steps)


@pytest.mark.parametrize("steps", ["0", str(MAX_STEPS + 1), "many"])
def test_steps_out_of_bounds_on_the_command_line(tiny_weights: Path, tmp_path: Path, steps: str) -> None:
    result = run("clean", tmp_path / "x.png", "--weights", tiny_weights, "--steps", steps)
    assert result.exit_code == 2 and "--steps" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("steps", [1, 3])
def test_steps_unroll_the_shared_convlstm(tiny_weights: Path, rng: np.random.Generator, steps: int) -> None:
    """N steps give exactly the model built for N steps with the same weights."""
    image = random_image(rng, 24, 32)
    derainer = Derainer(tiny_weights, device="cpu", precision="fp32", tile=0, steps=steps)
    assert derainer.steps == steps
    result = derainer.run(image, with_attention=True)
    assert len(result.attention) == steps

    model, _ = load_weights(tiny_weights)
    expected = Generator(replace(model.config, steps=steps))
    expected.load_state_dict(model.state_dict())
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        out = expected.eval()(x).image[0].permute(1, 2, 0).clamp(0, 1).numpy()
    assert np.abs(result.image.astype(np.float32) - np.rint(out * 255)).max() <= 1


def test_fewer_steps_change_the_output(tiny_weights: Path, rng: np.random.Generator) -> None:
    image = random_image(rng, 24, 32)
    one, two = (Derainer(tiny_weights, device="cpu", precision="fp32", steps=s).clean(image) for s in (1, 2))
    assert not np.array_equal(one, two)


# --- fused convolutions ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_relu_is_bit_exact(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    plain = conv_relu(8, 16, dilation=2)
    fused = copy.deepcopy(plain)
    assert fuse_for_cpu(fused, dtype) == 1 and isinstance(fused[1], torch.nn.Identity)
    x = torch.randn(1, 8, 20, 28).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=dtype is torch.bfloat16):
        assert torch.equal(fused(x), plain(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_residual_block_without_its_last_relu_is_bit_exact_on_relu_outputs(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    block = ResidualBlock(8)
    assert fuse_for_cpu(block, dtype) == 2  # its convolutions and ReLUs, as in the fused model
    fast = ShortcutAdd(block.body)
    x = torch.relu(torch.randn(1, 8, 20, 28)).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=dtype is torch.bfloat16):
        assert torch.equal(fast(x), block(x))


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 0.01)])
def test_the_fused_model_gives_the_same_output(dtype: torch.dtype, tolerance: float) -> None:
    plain = tiny_model().to(memory_format=torch.channels_last)
    fused = copy.deepcopy(plain)
    relus = sum(isinstance(m, torch.nn.ReLU) for m in plain.modules())
    heads = sum(isinstance(m, torch.nn.Conv2d) for m in plain.modules()) - relus - 4  # not the cell's 4 gates
    blocks = len(plain.attentive_rnn.blocks)
    # every ReLU module follows a conv; then the cell, each residual block's sum and the heads
    assert relus > 0 and heads == 4 and fuse_for_cpu(fused, dtype) == relus + 1 + blocks + heads
    unfused = (torch.nn.ReLU, torch.nn.Conv2d, ConvLSTMCell, ResidualBlock)
    assert not any(isinstance(m, unfused) for m in fused.modules())
    x = torch.rand(2, 3, 24, 36).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=dtype is torch.bfloat16):
        expected, ours = plain(x), fused(x)
    assert (ours.image.float() - expected.image.float()).abs().max() < tolerance  # bf16: one rounding fewer
    for a, b in zip(ours.attention, expected.attention):
        assert (a.float() - b.float()).abs().max() < tolerance


def test_without_the_kernel_the_model_runs_unfused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())  # a build without the kernel
    monkeypatch.setattr(postops, "available", functools.cache(postops.available.__wrapped__))
    model = tiny_model()
    assert postops.fuse_for_cpu(model, torch.float32) == 0
    assert any(isinstance(m, ConvLSTMCell) for m in model.modules())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_cpu_engine_runs_fused_layers(tiny_weights: Path, precision: str) -> None:
    derainer = Derainer(tiny_weights, device="cpu", precision=precision)
    assert any(isinstance(m, FusedConvLSTMCell) for m in derainer.model.modules())


# --- bench --------------------------------------------------------------------------------------


def test_bench_json_reports_the_conv_peak_and_onnxruntime(tiny_weights: Path) -> None:
    pytest.importorskip("onnxruntime")
    result = run(
        "bench", "--size", "64x48", "--repeat", "1", "--json", "--onnx", "--steps", "1",
        "--weights", tiny_weights, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["steps"] == 1
    assert [row["name"] for row in report["rows"]] == ["default", "plain fp32", "onnxruntime"]
    assert all(row["gflops"] > 0 and row["seconds"] > 0 for row in report["rows"])
    assert set(report["conv_peaks_gflops"]) == {"32ch 64x48", "256ch 16x12"}
    assert report["conv_peak_gflops"] == max(report["conv_peaks_gflops"].values())
    assert report["peak_fraction"] == pytest.approx(report["rows"][0]["gflops"] / report["conv_peak_gflops"])
    assert report["onnx_speedup"] > 0 and report["psnr_onnx_vs_default"] > 30


def test_bench_onnx_refuses_huge_sizes(tiny_weights: Path) -> None:
    result = run("bench", "--size", "4000x3000", "--onnx", "--weights", tiny_weights, "--device", "cpu")
    assert result.exit_code == 1 and "onnxruntime runs untiled" in result.output


def test_bench_times_a_batch_of_copies_per_megapixel(tiny_weights: Path) -> None:
    result = run(
        "bench", "--size", "64x48", "--repeat", "1", "--json", "--batch", "3",
        "--weights", tiny_weights, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    batched, single = report["rows"]
    assert report["batch"] == 3 and batched["name"] == "default ×3" and single["name"] == "plain fp32"
    assert not report["compiled"] and batched["first_call_seconds"] > 0
    assert batched["seconds_per_mp"] == pytest.approx(batched["seconds"] / (3 * 64 * 48 / 1e6))
    assert single["seconds_per_mp"] == pytest.approx(single["seconds"] / (64 * 48 / 1e6))
    assert report["speedup"] == pytest.approx(single["seconds_per_mp"] / batched["seconds_per_mp"])
    refused = run("bench", "--size", "64x48", "--batch", "2", "--onnx", "--weights", tiny_weights, "--device", "cpu")
    assert refused.exit_code == 2 and "leave out --batch or --onnx" in refused.output
