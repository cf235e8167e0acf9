import warnings

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import derain.engine
from derain.cli import main
from derain.dense import (
    DENSE_LEVEL,
    DENSE_MARGIN,
    DENSE_RAMP,
    DENSE_SIGMA,
    LARGE_DROP_RADIUS,
    combine_changes,
    dense_region,
    density_weights,
    enlarge,
    near_large_drops,
    reduce_change,
)
from derain.engine import Derainer

from .conftest import random_image


def test_a_field_of_drops_is_dense_and_a_lone_highlight_is_not():
    attention = np.zeros((480, 720), np.float32)
    attention[90:110, 590:610] = 1.0  # one bright spot, drop-sized
    yy, xx = np.mgrid[:480, :720]
    field = (yy // 12 + xx // 12) % 2 == 0  # half of a 200×300 patch covered in small drops
    attention[(yy >= 200) & (yy < 400) & (xx >= 50) & (xx < 350) & field] = 0.9
    weights = density_weights(attention)
    assert weights.shape == attention.shape and weights.dtype == np.float32
    assert weights[300, 200] == 1.0, "inside the field: the 2× change in full"
    assert weights[100, 600] == 0.0, "the lone spot: the 1× change only"
    assert weights[20, 700] == 0.0
    assert density_weights(attention * 0.4).max() == 0.0, "a faint map marks no drops"


def test_no_second_pass_near_a_drop_too_large_to_repaint_at_twice_the_size():
    yy, xx = np.mgrid[:480, :720]
    attention = (((yy // 12 + xx // 12) % 2 == 0) & (xx < 360)).astype(np.float32)  # a field of small drops
    big = (yy - 240) ** 2 + (xx - 180) ** 2 <= (LARGE_DROP_RADIUS + 10) ** 2
    attention[big] = 1.0  # and one large drop inside it
    weights = density_weights(attention)
    assert weights[240, 180] < 1e-6 and weights[240, 180 + LARGE_DROP_RADIUS + 10] < 0.05
    assert weights[60, 180] == 1.0, "the field away from it"


def test_large_drops_are_searched_near_the_dense_field_alone_with_the_same_answer():
    """The weights equal the ramp times the large-drop exclusion computed on the whole map, though
    the exclusion runs only around the dense field: with a large drop inside the field, on its edge,
    and at every distance beyond it until the ramp's edge is far behind."""
    height, width = 300, 900
    yy, xx = np.mgrid[:height, :width]
    field = ((yy // 6 + xx // 6) % 2 == 0) & (yy >= 80) & (yy < 220) & (xx >= 40) & (xx < 240)
    radius = LARGE_DROP_RADIUS + 3
    for distance in range(-radius, 400, 6):
        attention = field.astype(np.float32)
        attention[(yy - 150) ** 2 + (xx - (240 + distance)) ** 2 <= radius**2] = 1.0
        drops = attention > DENSE_LEVEL
        share = cv2.GaussianBlur(
            cv2.resize(drops.astype(np.float32), (width // 4, height // 4), interpolation=cv2.INTER_AREA),
            (0, 0),
            DENSE_SIGMA / 4,
        )
        ramp = np.clip((share - DENSE_RAMP[0]) / (DENSE_RAMP[1] - DENSE_RAMP[0]), 0.0, 1.0)
        whole = cv2.resize(ramp, (width, height), interpolation=cv2.INTER_LINEAR) * (1.0 - near_large_drops(drops))
        weights = density_weights(attention)
        assert (weights[:, -100:] == 0).all(), "the far side is not dense: the search does not reach it"
        np.testing.assert_array_equal(weights, whole, err_msg=f"a large drop {distance} px from the field")


def test_the_dense_region_covers_the_weights_with_context_inside_the_image():
    weights = np.zeros((300, 400), np.float32)
    assert dense_region(weights) is None
    weights[100:120, 10:30] = 0.5
    rows, cols = dense_region(weights)
    assert (rows.start, rows.stop) == (100 - DENSE_MARGIN, 120 + DENSE_MARGIN)
    assert (cols.start, cols.stop) == (0, 30 + DENSE_MARGIN)


def test_combine_keeps_the_first_change_where_not_dense_and_the_larger_where_dense():
    first = np.array([[[4.0, 4.0, 4.0], [-1.0, 0.0, 0.0], [2.0, 2.0, 2.0]]], np.float32)
    second = np.array([[[1.0, 1.0, 1.0], [-9.0, 3.0, 0.0], [6.0, 6.0, 6.0]]], np.float32)
    out = combine_changes(first, second, np.array([[1.0, 1.0, 0.0]], np.float32))
    assert np.array_equal(out[0, 0], first[0, 0]), "the 1× pass changed this pixel more"
    assert np.array_equal(out[0, 1], second[0, 1]), "the 2× pass did"
    assert np.array_equal(out[0, 2], first[0, 2]), "not dense: never the 2× change"
    half = combine_changes(first, second, np.full((1, 3), 0.5, np.float32))
    assert half[0, 1] == pytest.approx((first[0, 1] + second[0, 1]) / 2)


def test_enlarge_and_reduce_are_inverse_in_size():
    image = np.zeros((13, 21, 3), np.uint8)
    big = enlarge(image)
    assert big.shape == (26, 42, 3) and big.dtype == np.uint8
    assert reduce_change(big.astype(np.float32), (13, 21)).shape == (13, 21, 3)


def test_the_dense_pass_needs_the_gate(tiny_weights):
    with pytest.raises(ValueError, match="needs the attention gate"):
        Derainer(tiny_weights, device="cpu", gate=False, dense_pass=True)
    assert not Derainer(tiny_weights, device="cpu", gate=False).dense_pass
    assert Derainer(tiny_weights, device="cpu", gate=True).dense_pass, "None follows the gate"


def _derainers(weights):
    return (Derainer(weights, device="cpu", precision="fp32", gate=True, dense_pass=d) for d in (False, True))


def test_without_dense_drops_the_photo_comes_out_as_the_first_pass_left_it(tiny_weights, rng, monkeypatch):
    monkeypatch.setattr(derain.engine, "density_weights", lambda a: np.zeros(a.shape, np.float32))
    single, dense = _derainers(tiny_weights)
    image = random_image(rng, 40, 56)
    result = dense.run(image, with_attention=True)
    assert np.array_equal(result.image, single.clean(image))
    assert len(result.attention) == 2 and dense.run(image).attention is None


def test_the_attention_maps_are_the_first_pass_s_and_cost_no_second_one(tiny_weights, rng, monkeypatch):
    monkeypatch.setattr(derain.engine, "density_weights", lambda a: np.ones(a.shape, np.float32))
    single, dense = _derainers(tiny_weights)
    image = random_image(rng, 40, 56)
    maps = dense.run(image, with_attention=True).attention
    for first, second in zip(single.attention(image), maps):
        assert np.array_equal(first, second)
    monkeypatch.setattr(derain.engine, "enlarge", lambda image: pytest.fail("a second pass for the maps alone"))
    for first, second in zip(dense.attention(image), maps):
        assert np.array_equal(first, second)


def test_where_drops_are_dense_the_larger_of_the_two_passes_changes_is_taken(tiny_weights, rng, monkeypatch):
    monkeypatch.setattr(derain.engine, "density_weights", lambda a: np.ones(a.shape, np.float32))
    single, dense = _derainers(tiny_weights)
    image = random_image(rng, 40, 56)
    first = single.clean(image).astype(np.float32) - image
    big = enlarge(image)
    second = reduce_change(single.clean(big).astype(np.float32) - big, image.shape[:2])
    expected = np.clip(np.rint(image + combine_changes(first, second, np.ones((40, 56), np.float32))), 0, 255)
    out = dense.clean(image)
    assert np.array_equal(out, expected.astype(np.uint8))
    assert not np.array_equal(out, single.clean(image)), "the second pass changed something"
    frames = dense.run_batch([image, image[::-1].copy()])
    assert np.array_equal(frames[0].image, out), "video frames get the same pass"


def test_a_flipped_view_of_a_photo_gets_the_dense_pass_of_its_copy(tiny_weights, rng, monkeypatch):
    monkeypatch.setattr(derain.engine, "density_weights", lambda a: np.ones(a.shape, np.float32))
    _, dense = _derainers(tiny_weights)
    bgr = random_image(rng, 40, 56)
    view = bgr[..., ::-1]  # BGR to RGB as a view: negative strides
    assert np.array_equal(dense.clean(view), dense.clean(view.copy()))


def test_a_read_only_photo_gets_the_dense_pass_without_a_warning(tiny_weights, rng, monkeypatch):
    monkeypatch.setattr(derain.engine, "density_weights", lambda a: np.ones(a.shape, np.float32))
    _, dense = _derainers(tiny_weights)
    image = random_image(rng, 40, 56)
    frozen = image.copy()
    frozen.flags.writeable = False  # as np.asarray(PIL.Image.open(...)) gives it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(dense.clean(frozen), dense.clean(image))


def test_a_photo_seen_above_the_working_size_gets_no_second_pass(tiny_weights, rng, monkeypatch):
    monkeypatch.setattr(derain.engine, "density_weights", lambda a: np.ones(a.shape, np.float32))
    seen = []
    monkeypatch.setattr(derain.engine, "enlarge", lambda image: seen.append(image.shape) or image)
    side = derain.engine.WORKING_SIZE + 4
    image = random_image(rng, side, side)
    Derainer(tiny_weights, device="cpu", gate=True, working_size=None).clean(image)
    assert not seen, "its drops are large enough already"
    Derainer(tiny_weights, device="cpu", gate=True).clean(image)
    assert seen == [(derain.engine.WORKING_SIZE,) * 2 + (3,)], "brought to the working size, it gets one"


def test_lamps_of_a_night_shot_stay_though_the_dense_region_alone_looks_like_day(tiny_weights, monkeypatch):
    image = np.zeros((200, 400, 3), np.uint8)
    image[:, 300:] = 200  # a lit wall: the frame is dark, the dense region around it bright
    image[95:107, 340:352] = 250  # a lamp on it (clipped, below full scale: the network moves it)
    dense = np.zeros((200, 400), np.float32)
    dense[:, 330:] = 1.0
    monkeypatch.setattr(derain.engine, "density_weights", lambda a: dense.copy())
    monkeypatch.setattr(derain.engine, "gate_weights", torch.ones_like)  # the output wherever not a lamp
    single, twice = _derainers(tiny_weights)
    out, first = twice.clean(image), single.clean(image)
    assert np.array_equal(out[97:105, 342:350], image[97:105, 342:350]), "the lamp as it was"
    assert np.array_equal(out[97:105, 342:350], first[97:105, 342:350])
    assert not np.array_equal(out[:, 330:], first[:, 330:]), "the rest of the region had its second pass"


def test_the_command_line_takes_the_dense_pass_and_refuses_it_without_the_gate(tiny_weights, tmp_path, rng):
    src = tmp_path / "rainy.png"
    cv2.imwrite(str(src), random_image(rng, 32, 48))
    runner = CliRunner()
    refused = runner.invoke(main, ["clean", str(src), "-w", str(tiny_weights), "--no-gate", "--dense-pass"])
    assert refused.exit_code == 2 and "needs the attention gate" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "rainy_derained.png").exists()
    done = runner.invoke(main, ["clean", str(src), "-w", str(tiny_weights), "--gate", "--dense-pass"])
    assert done.exit_code == 0 and (tmp_path / "rainy_derained.png").is_file()
