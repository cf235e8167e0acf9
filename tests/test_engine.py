import os
import re

import cv2
import numpy as np
import pytest
import torch

import derain.engine
from derain.colour import cap_colour
from derain.engine import (
    GATE_LEVEL,
    GATE_SIGMA,
    Derainer,
    Precision,
    Restoration,
    _halo_on_device,
    _halo_on_host,
    _parse_tile,
    _scale_back,
    gate_weights,
    pick_device,
    pick_precision,
)
from derain.metrics import psnr
from derain.weights import save_weights

from .conftest import random_image, tiny_model

CPU = torch.device("cpu")


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (33, 18), (64, 64)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_clean_keeps_shape_and_dtype(tiny_weights, rng, shape, dtype):
    image = random_image(rng, *shape, dtype=dtype)
    out = Derainer(tiny_weights, device="cpu").clean(image)
    assert out.shape == image.shape and out.dtype == dtype


def test_uint16_is_processed_in_float_not_squashed_to_8_bits(tiny_weights, rng):
    derainer = Derainer(tiny_weights, device="cpu", precision="fp32")
    image16 = random_image(rng, 16, 16, np.uint16)
    out16 = derainer.clean(image16)
    assert np.any(out16 % 257 != 0), "16-bit output keeps values between the 8-bit levels"
    out8 = derainer.clean(np.rint(image16 / 257).astype(np.uint8))
    assert np.abs(out16 / 257 - out8).max() <= 2


def test_attention_maps_are_float_in_unit_range(tiny_weights, rng):
    maps = Derainer(tiny_weights, device="cpu").attention(random_image(rng, 21, 30))
    assert len(maps) == 2
    for m in maps:
        assert m.shape == (21, 30) and m.dtype == np.float32
        assert m.min() >= 0 and m.max() <= 1


def test_run_returns_image_and_maps_from_one_pass(tiny_weights, rng):
    derainer = Derainer(tiny_weights, device="cpu", precision="fp32")
    image = random_image(rng, 20, 24)
    result = derainer.run(image, with_attention=True)
    assert np.array_equal(result.image, derainer.clean(image))
    assert derainer.run(image).attention is None


def test_the_gate_takes_the_output_near_drops_and_the_input_far_from_them():
    attention = torch.zeros(200, 300)
    attention[95:105, 45:55] = 1.0  # one small drop
    gate = gate_weights(attention)
    assert gate[100, 50] == 1.0, "the drop: the output in full, however small"
    assert 0.0 < gate[100, 80] < 1.0, "its soft edge: some"
    assert gate[100, 250] == 0.0 and gate[10, 290] == 0.0, "far from it: the input"
    assert gate_weights(torch.full((50, 60), GATE_LEVEL * 0.5)) == pytest.approx(0.5)
    assert not gate_weights(torch.zeros(2, 50, 60)).any(), "a batch of maps, each on its own"


def test_the_gates_halo_is_the_same_on_the_host_and_on_a_device(rng):
    """OpenCV on the CPU, torch ops on a GPU: the same blur at a quarter of the size."""
    drops = cv2.GaussianBlur((rng.random((2, 192, 256)) > 0.995).astype(np.float32).transpose(1, 2, 0) * 3, (0, 0), 3)
    attention = torch.from_numpy(drops.transpose(2, 0, 1).copy()).clamp(0, 1)
    host, device = _halo_on_host(attention, GATE_SIGMA), _halo_on_device(attention, GATE_SIGMA)
    assert host.shape == device.shape == (2, 192, 256) and host.max() > 0.01
    assert (host - device).abs().max() < 1e-4
    assert not torch.equal(host[0], host[1]), "each map of a batch blurred on its own"


def test_gated_output_blends_raw_output_and_input_by_the_gate(tiny_weights, rng):
    image = random_image(rng, 48, 64)  # a multiple of 4: no padding, maps and pixels line up
    raw = Derainer(tiny_weights, device="cpu", precision="fp32", gate=False).run(image, with_attention=True)
    gated = Derainer(tiny_weights, device="cpu", precision="fp32", gate=True).clean(image)
    gate = gate_weights(torch.from_numpy(raw.attention[-1])).numpy()[..., None]
    output, x = (torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in (raw.image, image))
    cap_colour(output, x)  # colours no stronger than the input's nearby
    expected = image + gate * (output.permute(1, 2, 0).numpy() * 255 - image)
    assert np.abs(gated - expected).max() <= 1.0, "the blend of the 8-bit raw output, within its rounding"


def test_the_gate_is_on_by_default_only_for_weights_validated_with_it(tiny_weights, tmp_path):
    gated = save_weights(tiny_model(), tmp_path / "gated.safetensors", {"gate": True})
    assert Derainer(gated, device="cpu").gate and not Derainer(gated, device="cpu", gate=False).gate
    assert not Derainer(tiny_weights, device="cpu").gate, "plain weights (and gen.pkl): the raw output"
    assert Derainer(tiny_weights, device="cpu", gate=True).gate


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_bad_arrays_are_rejected(tiny_weights, bad):
    with pytest.raises(ValueError):
        Derainer(tiny_weights, device="cpu").clean(bad)


def test_tiled_equals_untiled_on_a_small_model(tiny_weights, rng):
    image = random_image(rng, 150, 190)
    whole = Derainer(tiny_weights, device="cpu", precision="fp32", tile=0).clean(image)
    tiled = Derainer(tiny_weights, device="cpu", precision="fp32", tile=64, tile_overlap=48).clean(image)
    assert psnr(whole, tiled) > 45


def test_a_photo_larger_than_the_working_size_is_derained_at_it(tiny_weights, rng):
    derainer = Derainer(tiny_weights, device="cpu", working_size=32)
    seen = []
    derainer.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    image = random_image(rng, 64, 96, np.uint16)
    result = derainer.run(image, with_attention=True)
    assert seen == [(32, 48)]
    assert result.image.shape == image.shape and result.image.dtype == np.uint16
    assert all(m.shape == (64, 96) for m in result.attention)
    derainer.run(random_image(rng, 32, 200))  # short side at the working size: its own size
    assert seen[-1] == (32, 200)


def test_scaling_back_keeps_every_pixel_the_network_left_alone(rng):
    image = random_image(rng, 80, 120)
    small = cv2.resize(image, (60, 40), interpolation=cv2.INTER_AREA)
    repainted = small.copy()
    repainted[10:20, 30:40] = 0  # one "drop" repainted at the working size
    out = _scale_back(image, small, Restoration(repainted, [np.zeros((40, 60), np.float32)])).image
    assert np.array_equal(out[:16], image[:16]) and np.array_equal(out[:, :56], image[:, :56])
    assert out[24:36, 64:76].max() < image[24:36, 64:76].max()  # the drop's change, at full size


def test_frames_in_a_batch_are_scaled_like_single_photos(tiny_weights, rng):
    derainer = Derainer(tiny_weights, device="cpu", precision="fp32", working_size=40)
    frames = [random_image(rng, 60, 80) for _ in range(2)]
    for batched, frame in zip(derainer.run_batch(frames), frames):
        single = derainer.run(frame, with_attention=True)
        assert np.array_equal(batched.image, single.image)
        assert batched.attention[-1].shape == (60, 80)


@pytest.mark.parametrize("tile", ["auto", 64])  # one forward pass, or frame by frame in tiles
def test_a_batch_can_bring_back_the_final_map_alone(tiny_weights, rng, tile):
    derainer = Derainer(tiny_weights, device="cpu", precision="fp32", tile=tile, tile_overlap=16)
    frames = [random_image(rng, 70, 96) for _ in range(2)]
    for final, every in zip(derainer.run_batch(frames, all_maps=False), derainer.run_batch(frames)):
        assert len(every.attention) == derainer.steps and len(final.attention) == 1
        assert np.array_equal(final.attention[0], every.attention[-1])
        assert np.array_equal(final.image, every.image)


def test_a_long_list_runs_in_passes_of_batch_size(tiny_weights, rng, monkeypatch):
    derainer = Derainer(tiny_weights, device="cpu", precision="fp32", dense_pass=False)
    monkeypatch.setattr(derainer, "batch_size", lambda height, width: 2)  # as a GPU with room for two
    passes = []
    derainer.model.register_forward_pre_hook(lambda module, args: passes.append(len(args[0])))
    frames = [random_image(rng, 40, 56) for _ in range(5)]
    results = derainer.run_batch(iter(frames), all_maps=False)  # any iterable
    assert passes == [2, 2, 1], "memory for two at a time, not for the whole list"
    for result, frame in zip(results, frames, strict=True):
        assert np.abs(result.image.astype(int) - derainer.clean(frame)).max() <= 1


def test_run_batch_of_nothing_or_of_bad_items(tiny_weights):
    derainer = Derainer(tiny_weights, device="cpu")
    assert derainer.run_batch([]) == []
    with pytest.raises(TypeError, match="numpy array"):
        derainer.run_batch([np.zeros((8, 8, 3), np.uint8), None])


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"working_size": "full"}, "working_size must be a whole number (None: the photo's own size"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"steps": True}, "steps must be a whole number"),
        ({"tile_overlap": None}, "tile_overlap must be a whole number"),
        ({"gate": "no"}, "gate must be True, False or None"),
    ],
)
def test_settings_of_the_wrong_type_are_named(tiny_weights, setting, named):
    with pytest.raises(TypeError, match=re.escape(named)):
        Derainer(tiny_weights, device="cpu", **setting)


def test_frames_too_large_for_one_pass_are_tiled_one_by_one(tiny_weights, rng):
    derainer = Derainer(tiny_weights, device="cpu", precision="fp32", tile=64, tile_overlap=16)
    frames = [random_image(rng, 70, 96) for _ in range(2)]
    for batched, frame in zip(derainer.run_batch(frames), frames):
        assert np.array_equal(batched.image, derainer.clean(frame)), "tiled, as a single photo is"


def test_omp_num_threads_is_respected_on_the_cpu(tiny_weights, monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        Derainer(tiny_weights, device="cpu")
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        Derainer(tiny_weights, device="cpu")
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


def test_working_size_is_checked(tiny_weights):
    with pytest.raises(ValueError, match="at least"):
        Derainer(tiny_weights, device="cpu", working_size=8)


def test_auto_tiling_splits_large_images(tiny_weights, monkeypatch):
    import derain.engine as engine

    derainer = Derainer(tiny_weights, device="cpu")
    monkeypatch.setattr(engine, "CPU_TILE_PIXELS", 100 * 100)
    assert derainer._tile_size(300, 400) == 100
    assert derainer._tile_size(80, 100) == 100  # fits the budget: one tile
    assert Derainer(tiny_weights, device="cpu", tile=0)._tile_size(3000, 4000) == 4000


def test_precision_selection():
    assert pick_precision("auto", CPU, bf16_native=True) is Precision.BF16
    assert pick_precision("auto", CPU, bf16_native=False) is Precision.FP32
    assert pick_precision("auto", torch.device("cuda")) is Precision.FP16
    assert pick_precision("fp32", torch.device("cuda")) is Precision.FP32
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        pick_precision("fp16", CPU)
    with pytest.raises(ValueError, match="unknown precision"):
        pick_precision("int8", CPU)


def test_device_and_tile_validation():
    assert pick_device("cpu") == CPU
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA was requested"):
            pick_device("cuda")
    assert _parse_tile("auto") is None and _parse_tile("0") == 0 and _parse_tile("257") == 256
    for bad in ("big", "10"):
        with pytest.raises(ValueError, match="tile"):
            _parse_tile(bad)


def test_bf16_output_is_close_to_fp32(tiny_weights, rng):
    image = random_image(rng, 40, 48)
    fp32 = Derainer(tiny_weights, device="cpu", precision="fp32").clean(image)
    bf16 = Derainer(tiny_weights, device="cpu", precision="bf16").clean(image)
    assert psnr(fp32, bf16) > 30


def test_compiling_is_refused_off_cuda_and_without_triton(tiny_weights, monkeypatch):
    with pytest.raises(ValueError, match="on CUDA GPUs only, not on cpu"):
        Derainer(tiny_weights, device="cpu", compile=True)
    monkeypatch.setattr(derain.engine, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(derain.engine.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="needs Triton: pip install triton"):
        Derainer(tiny_weights, device="cuda", compile=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_compiled_model_matches_the_eager_one_on_cuda(tiny_weights, rng):
    images = [random_image(rng, 96, 128) for _ in range(3)]
    eager = Derainer(tiny_weights, device="cuda")
    compiled = Derainer(tiny_weights, device="cuda", compile=True)
    assert compiled.channels_last and not eager.channels_last
    for image in [*images, images[0][:64, :80].copy()]:  # a second size: the dynamic graph
        difference = np.abs(compiled.clean(image).astype(int) - eager.clean(image)).max()
        assert difference <= 2, f"{difference} levels apart"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("gate", [False, True])  # gated on the device there, on the host here
def test_cuda_fp16_matches_cpu_fp32(tiny_weights, rng, gate):
    image = random_image(rng, 200, 300)
    cpu = Derainer(tiny_weights, device="cpu", precision="fp32", gate=gate).clean(image)
    gpu = Derainer(tiny_weights, device="cuda", gate=gate)
    assert gpu.precision is Precision.FP16
    assert psnr(cpu, gpu.clean(image)) > 40
