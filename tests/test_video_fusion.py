"""Temporal fusion and the flicker figure, on synthetic frames with known motion (no video files)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from derain.engine import Derainer
from derain.frames import derain_frames, restore_frames
from derain.fusion import (
    FRAMES_IN_FLIGHT,
    ZOOMS,
    FlowField,
    _change,
    _holes_filled,
    _scene_motion,
    fuse,
    luma8,
    neighbour_offsets,
)
from derain.video_eval import consecutive_flows, flicker

SHIFT = 3  # pixels the scene moves left per frame


def textured_scene(width: int, height: int, seed: int = 1, grain: int = 4) -> np.ndarray:
    """A smooth random texture that optical flow can lock onto, with detail ``grain`` pixels wide."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height // grain, width // grain, 3), dtype=np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def panning(frames: int, width: int = 96, height: int = 72, seed: int = 1, grain: int = 4) -> list[np.ndarray]:
    scene = textured_scene(width + SHIFT * frames, height, seed, grain)
    return [np.ascontiguousarray(scene[:, SHIFT * t : SHIFT * t + width]) for t in range(frames)]


def sharp_drops(frame: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``frame`` with ``count`` sharp drops of 3–6 px radius, with dark rims, painted on."""
    rng = np.random.default_rng(seed)
    glass = frame.copy()
    h, w = frame.shape[:2]
    for _ in range(count):
        centre, radius = (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(3, 7))
        cv2.circle(glass, centre, radius, tuple(int(v) for v in rng.integers(60, 200, 3)), -1)
        cv2.circle(glass, centre, radius, (20, 20, 20), 1)
    return glass


def test_fusion_recovers_a_patch_a_neighbour_saw() -> None:
    truth = panning(5)
    patch = (slice(30, 42), slice(40, 52))  # a "drop" fixed on the glass
    attention = np.zeros(truth[0].shape[:2], np.float32)
    attention[patch] = 1.0
    damaged = [f.copy() for f in truth]
    damaged[2][patch] = 128  # only the middle frame's output is wrong under the drop

    fused = list(fuse([(f, f, attention) for f in damaged], radius=2))

    assert len(fused) == 5
    before = np.abs(damaged[2][patch].astype(int) - truth[2][patch]).mean()
    after = np.abs(fused[2][patch].astype(int) - truth[2][patch]).mean()
    assert before > 30 and after < before / 4


def test_where_the_model_changed_the_input_counts_as_drop_though_the_attention_missed_it() -> None:
    truth = panning(9)
    patch = (slice(33, 39), slice(43, 49))
    rainy = [f.copy() for f in truth]
    for f in rainy:
        f[patch] = 255  # a bright drop on the glass in every input frame
    damaged = [f.copy() for f in truth]
    damaged[4][patch] = np.clip(truth[4][patch].astype(int) + 60, 0, 255)  # the model removed it only in part
    blind = np.zeros(truth[0].shape[:2], np.float32)  # and its attention saw nothing

    fused = list(fuse([(r, d, blind) for r, d in zip(rainy, damaged)], radius=4))

    before = np.abs(damaged[4][patch].astype(int) - truth[4][patch]).mean()
    after = np.abs(fused[4][patch].astype(int) - truth[4][patch]).mean()
    assert before > 30 and after < before / 4


def test_a_drop_the_model_left_unseen_is_found_by_how_it_stays_on_the_glass() -> None:
    truth = panning(9)
    patch = (slice(30, 36), slice(40, 46))
    damaged = [f.copy() for f in truth]
    for f in damaged:
        f[patch] = 230  # the model left the drop as it was, in every frame
    blind = np.zeros(truth[0].shape[:2], np.float32)  # neither its attention nor its change saw it

    fused = list(fuse([(f, f, blind) for f in damaged], radius=4))

    before = np.abs(damaged[4][patch].astype(int) - truth[4][patch]).mean()
    after = np.abs(fused[4][patch].astype(int) - truth[4][patch]).mean()
    assert before > 30 and after < before / 4


def test_a_wide_soft_drop_the_model_left_unseen_is_filled_from_the_frames_that_see_behind_it() -> None:
    """A clear drop 26 px wide, as on a lens: a dark rim, a smooth minified scene inside and an
    edge blurred by defocus. Its blurred edge must not count as scene when judging the neighbours."""
    truth = panning(17, 128, 96)
    ys, xs = np.mgrid[0:96, 0:128]
    radius = np.hypot(ys - 48, xs - 64)
    look = np.zeros((96, 128, 3), np.float32)
    inside = radius < 10
    look[inside] = (100 + ys[inside, None] - 48).astype(np.float32)
    look[(radius >= 10) & (radius < 13)] = 25
    alpha = cv2.GaussianBlur((radius < 13).astype(np.float32), (0, 0), 2.0)[..., None]
    damaged = [np.clip(f * (1 - alpha) + look * alpha, 0, 255).astype(np.uint8) for f in truth]
    blind = np.zeros(truth[0].shape[:2], np.float32)

    fused = list(fuse([(f, f, blind) for f in damaged], radius=8))

    drop = radius < 17
    before = np.abs(damaged[8][drop].astype(int) - truth[8][drop]).mean()
    after = np.abs(fused[8][drop].astype(int) - truth[8][drop]).mean()
    assert before > 30 and after < before / 2


def test_the_inside_of_a_stuck_ring_is_stuck_unless_it_is_wide_or_open_to_the_edge() -> None:
    """A wide clear drop's smooth inside looks the same a few pixels on, so the neighbours find only its rim."""
    stuck = np.zeros((60, 100), np.float32)
    cv2.circle(stuck, (30, 30), 6, 1.0, 2)  # a drop's rim around a 9-px hole: within 10 % of the width
    cv2.circle(stuck, (75, 30), 15, 1.0, 2)  # a hole too wide to be a drop's inside
    cv2.rectangle(stuck, (-5, 45), (12, 70), 0.8, 2)  # a hole open to the frame's edge

    filled = _holes_filled(stuck)

    assert filled[30, 30] == 1.0 and filled[27:34, 27:34].min() == 1.0
    assert filled[30, 75] == 0.0 and filled[55, 4] == 0.0
    assert np.array_equal(filled[stuck > 0], stuck[stuck > 0])


def test_something_moving_on_its_own_is_no_drop() -> None:
    frames = panning(9)
    for t, f in enumerate(frames):  # a small bright thing crossing the scene against the pan
        f[30:36, 20 + 5 * t : 26 + 5 * t] = 230
    blind = np.zeros(frames[0].shape[:2], np.float32)

    fused = list(fuse([(f, f, blind) for f in frames], radius=4))

    thing = (slice(28, 38), slice(38, 48))  # where it is in frame 4, and around it
    assert np.abs(fused[4][thing].astype(int) - frames[4][thing]).mean() < 2


def test_what_moves_with_the_camera_keeps_its_inside_and_all_of_it_with_model_drops_only() -> None:
    frames = panning(12, 160, 120)
    for f in frames:
        cv2.putText(f, "2026-11-27 12:00", (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
        f[95:] = (40, 40, 40)  # the car's bonnet, across the bottom of the frame: the pan runs along its edge
        f[105:110] = (200, 30, 30)
    blind = np.zeros(frames[0].shape[:2], np.float32)

    fused = list(fuse([(f, f, blind) for f in frames], radius=8))
    kept = list(fuse([(f, f, blind) for f in frames], radius=8, find_missed=False))

    assert np.abs(fused[6][95:].astype(int) - frames[6][95:]).max() <= 1  # every neighbour shows it there too
    text = [np.abs(a[:25].astype(int) - f[:25]).mean() for a, f in zip(fused, frames)]
    assert np.mean(text) < 1.6 and max(text) < 2.5  # the text stays legible
    assert all(np.array_equal(a, b) for a, b in zip(kept, frames))


def test_drops_too_dense_for_optical_flow_do_not_hide_the_camera_motion() -> None:
    """Half the frame under sharp-rimmed drops the model missed, over a soft scene: optical flow
    follows the drops and finds the camera still; the scene's motion is found all the same."""
    truth = panning(17, 160, 120, grain=8)
    glass = sharp_drops(truth[0], 200, seed=2)
    drops = np.any(glass != truth[0], axis=2)
    damaged = [np.where(drops[..., None], glass, f) for f in truth]
    blind = np.zeros(drops.shape, np.float32)

    flows = FlowField()
    for i, f in enumerate(damaged):
        flows.add(i, luma8(f))
    assert np.abs(flows.camera(8, 9)[:2, 2] - (-SHIFT, 0)).max() < 1.0  # the scene moves left
    fused = list(fuse([(f, f, blind) for f in damaged], radius=8))

    before = np.abs(damaged[8][drops].astype(int) - truth[8][drops]).mean()
    after = np.abs(fused[8][drops].astype(int) - truth[8][drops]).mean()
    assert after < 0.9 * before


def zooming(views: list[np.ndarray], width: int = 160, height: int = 120) -> list[np.ndarray]:
    """Frames of a smooth scene seen through 2×3 affine ``views`` (frame pixel to scene pixel)."""
    scene = textured_scene(3 * width, 5 * height // 2, grain=8)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return [cv2.warpAffine(scene, view, (width, height), flags=flags) for view in views]


def corner_error(motion: np.ndarray, truth: np.ndarray, width: int = 160, height: int = 120) -> float:
    corners = np.float32([[0, 0], [width, 0], [0, height], [width, height]]).reshape(-1, 1, 2)
    return float(np.abs(cv2.perspectiveTransform(corners, motion) - cv2.perspectiveTransform(corners, truth)).max())


def test_a_camera_zooming_out_behind_dense_drops_the_model_missed_is_followed() -> None:
    """Two fifths of the frame under sharp drops the model missed, a pan of 5 px and a zoom out of
    1 % per frame: optical flow's fit partly follows the drops, so it is made only where the
    flow explains the change, and where it still explains too little the correlation's shifts
    at a few zooms are tried (before: 4.7 px off at the corners per step on average)."""
    views = [np.array([[0.99**t, 0, 100 + 5 * t], [0, 0.99**t, 80 + 2 * t], [0, 0, 1]]) for t in range(9)]
    truth = zooming([view[:2] for view in views])
    glass = sharp_drops(truth[0], 160, seed=3)
    drops = np.any(glass != truth[0], axis=2)
    flows = FlowField()
    for i, f in enumerate(truth):
        flows.add(i, luma8(np.where(drops[..., None], glass, f)))

    errors = [corner_error(flows.camera(t, t + 1), np.linalg.inv(views[t + 1]) @ views[t]) for t in range(8)]
    assert np.mean(errors) < 2.5


def test_the_scenes_zoom_is_found_behind_drops_that_stay_put() -> None:
    """Where the fit failed, the scene's motion is a correlation peak away from zero shift; with a
    2 % zoom per step a shift alone is 2 px off at the corners, and a zoom found with it is not."""
    views = [
        np.array([[1.0, 0, 120], [0, 1.0, 90], [0, 0, 1]]),
        np.array([[1 / 1.02, 0, 128], [0, 1 / 1.02, 93], [0, 0, 1]]),
    ]
    truth = zooming([view[:2] for view in views])
    glass = sharp_drops(truth[0], 160, seed=3)
    drops = np.any(glass != truth[0], axis=2)
    first, second = (luma8(np.where(drops[..., None], glass, f)).astype(np.float32) for f in truth)
    still = _change(first, second)
    true = np.linalg.inv(views[1]) @ views[0]

    found = _scene_motion(first, second, still, 0.0, ZOOMS)
    shift_only = _scene_motion(first, second, still, 0.0, (1.0,))
    assert found is not None and shift_only is not None
    assert corner_error(shift_only, true) > 2 * corner_error(found, true)
    assert corner_error(found, true) < 1.0
    assert _scene_motion(first, second, still, 1.0, ZOOMS) is None  # nothing explains more than all


def assert_still_camera_changes_nothing(frames: list[np.ndarray]) -> None:
    """No step between ``frames`` moves the camera, and fused without drops they stay as they are."""
    flows = FlowField()
    for i, f in enumerate(frames):
        flows.add(i, luma8(f))
    assert all(np.abs(flows.camera(i, i + 1)[:2, 2]).max() < 0.5 for i in range(len(frames) - 1))
    blind = np.zeros(frames[0].shape[:2], np.float32)
    fused = list(fuse([(f, f, blind) for f in frames], radius=4))
    assert all(np.abs(a.astype(int) - f).mean() < 0.5 for a, f in zip(fused, frames))


def test_something_big_moving_before_a_still_camera_is_not_taken_for_the_camera() -> None:
    """A still camera, a noisy scene, a thing a seventh of the frame crossing it: none of it moves
    the camera, and with no drops nothing changes."""
    rng = np.random.default_rng(5)
    scene, thing = textured_scene(160, 120, seed=3), textured_scene(60, 45, seed=4)
    frames = []
    for t in range(9):
        f = scene.copy()
        f[20:65, 10 + 8 * t : 70 + 8 * t] = thing
        frames.append(np.clip(f + rng.normal(0, 6, f.shape), 0, 255).astype(np.uint8))

    assert_still_camera_changes_nothing(frames)


def test_sixteen_bit_frames_fuse_as_their_eight_bit_twins() -> None:
    truth = panning(9)
    damaged = [f.copy() for f in truth]
    for f in damaged:
        f[30:36, 40:46] = 230  # a drop the model missed: found by thresholds in 8-bit levels
    blind = np.zeros(truth[0].shape[:2], np.float32)

    eight = list(fuse([(f, f, blind) for f in damaged], radius=4))
    deep = [f.astype(np.uint16) * 257 for f in damaged]
    sixteen = list(fuse([(f, f, blind) for f in deep], radius=4))

    assert all(f.dtype == np.uint16 for f in sixteen)
    assert np.abs(sixteen[4] / 257.0 - eight[4]).max() <= 1.0
    assert np.abs(eight[4].astype(int) - damaged[4]).max() > 30, "the drop was filled"


def test_a_thing_filling_half_a_still_cameras_frame_does_not_move_the_camera() -> None:
    """A sharp thing half the frame wide crossing a soft scene draws optical flow's fit: then
    whole parts of the frame are explained by no motion alone, and the camera holds still."""
    scene, thing = textured_scene(160, 120, seed=3, grain=8), textured_scene(110, 84, seed=4, grain=3)
    frames = []
    for t in range(9):
        f = scene.copy()
        f[8:92, 4 + 4 * t : 114 + 4 * t] = thing
        frames.append(f)

    assert_still_camera_changes_nothing(frames)


def test_frames_across_a_cut_lend_nothing() -> None:
    truth = panning(5) + panning(4, seed=2)  # a cut to another shot after frame 4
    patch = (slice(30, 38), slice(40, 48))
    attention = np.zeros(truth[0].shape[:2], np.float32)
    attention[patch] = 1.0
    damaged = [f.copy() for f in truth]
    damaged[4][patch] = 128

    fused = list(fuse([(f, f, attention) for f in damaged], radius=4))

    after = np.abs(fused[4][patch].astype(int) - truth[4][patch]).mean()
    assert after < 8  # the frames before the cut filled it; the other shot's pixels did not get in


def test_a_neighbour_that_saw_something_else_there_lends_nothing() -> None:
    truth = panning(9)
    patch = (slice(30, 38), slice(40, 48))
    attention = np.zeros(truth[0].shape[:2], np.float32)
    attention[patch] = 1.0
    damaged = [f.copy() for f in truth]
    damaged[4][patch] = 128
    passing = textured_scene(96, 72, seed=3)
    for t in range(4):  # something passed in front of that part of the scene in the frames before
        where = (slice(22, 46), slice(40 - SHIFT * t, 72 - SHIFT * t))
        damaged[t][where] = passing[where]

    fused = list(fuse([(f, f, attention) for f in damaged], radius=4))

    after = np.abs(fused[4][patch].astype(int) - truth[4][patch]).mean()
    assert after < 8  # the camera's motion holds for those frames too; only their looks differ


def test_a_wide_window_sees_behind_a_drop_wider_than_the_near_frames_moved() -> None:
    truth = panning(17)
    patch = (slice(24, 48), slice(36, 60))  # 24 px wide: frames closer than 8 see drop here too
    attention = np.zeros(truth[0].shape[:2], np.float32)
    attention[patch] = 1.0
    damaged = [f.copy() for f in truth]
    for f in damaged:
        f[patch] = 128  # the drop spoils every frame's output at the same place on the glass

    def error(radius: int) -> float:
        fused = list(fuse([(f, f, attention) for f in damaged], radius=radius))
        return float(np.abs(fused[8][patch].astype(int) - truth[8][patch]).mean())

    assert error(8) < error(2) / 3


def test_the_consensus_is_of_the_frames_that_see_behind_a_drop_not_of_those_that_see_it_too() -> None:
    """A drop 30 px wide on a 3 px per frame pan: six of the ten neighbours show it again, and
    their median must not outvote the four that see behind it."""
    truth = panning(17)
    patch = (slice(24, 54), slice(36, 66))
    attention = np.zeros(truth[0].shape[:2], np.float32)
    attention[patch] = 1.0
    damaged = [f.copy() for f in truth]
    for f in damaged:
        f[patch] = 128

    fused = list(fuse([(f, f, attention) for f in damaged], radius=8))

    before = np.abs(damaged[8][patch].astype(int) - truth[8][patch]).mean()
    after = np.abs(fused[8][patch].astype(int) - truth[8][patch]).mean()
    assert after < before / 4


def test_fusion_gives_the_same_frames_on_any_number_of_threads() -> None:
    """Four threads also fuse four frames at once; one thread fuses one frame at a time."""
    truth = panning(9)
    attention = np.zeros(truth[0].shape[:2], np.float32)
    attention[30:42, 40:52] = 1.0
    damaged = [f.copy() for f in truth]
    for f in damaged:
        f[30:42, 40:52] = 128
    triples = [(f, f, attention) for f in damaged]

    one = list(fuse(triples, radius=4, workers=1))
    four = list(fuse(triples, radius=4, workers=4))

    assert all(np.array_equal(a, b) for a, b in zip(one, four))
    assert sum(not np.array_equal(a, d) for a, d in zip(one, damaged)) >= 7, "fusion filled the patch"


def test_fusion_reads_only_a_window_of_frames_ahead_of_what_it_gave_out() -> None:
    frames = panning(24)
    attention = np.zeros(frames[0].shape[:2], np.float32)
    attention[30:42, 40:52] = 1.0
    pulled = 0

    def source():
        nonlocal pulled
        for f in frames:
            pulled += 1
            yield f, f, attention

    lags = [pulled - given for given, _ in enumerate(fuse(source(), radius=2, workers=4))]

    assert len(lags) == len(frames)
    assert max(lags) <= 2 + FRAMES_IN_FLIGHT  # the radius ahead, and the frames being fused
    assert max(lags) > 2 + 1, "several frames were fused at once"


def test_neighbours_are_powers_of_two_and_halfway_between_up_to_the_window() -> None:
    assert neighbour_offsets(0) == []
    assert neighbour_offsets(1) == [-1, 1]
    assert neighbour_offsets(12) == [-1, 1, -2, 2, -3, 3, -4, 4, -6, 6, -8, 8, -12, 12]
    assert neighbour_offsets(16) == [-1, 1, -2, 2, -3, 3, -4, 4, -6, 6, -8, 8, -12, 12, -16, 16]
    assert neighbour_offsets(5)[-2:] == [-5, 5]


def test_fusion_changes_nothing_without_drops_or_without_motion() -> None:
    frames = panning(4)
    clear = np.zeros(frames[0].shape[:2], np.float32)
    assert all(np.array_equal(a, b) for a, b in zip(fuse([(f, f, clear) for f in frames]), frames))

    still = [frames[0]] * 4
    covered = np.ones_like(clear)  # the same drops over the same scene in every frame: nothing to gain
    assert all(np.abs(a.astype(int) - still[0]).max() <= 1 for a in fuse([(f, f, covered) for f in still]))


def test_fusion_radius_zero_is_per_frame_and_rejects_negative() -> None:
    frames = panning(3)
    att = np.ones(frames[0].shape[:2], np.float32)
    assert all(a is b for a, b in zip(fuse([(f, f, att) for f in frames], radius=0), frames))
    with pytest.raises(ValueError, match="radius"):
        list(fuse([(frames[0], frames[0], att)], radius=-1))


def test_flicker_is_zero_for_a_steady_clip_and_measures_a_brightness_jump() -> None:
    frames = panning(4)
    flows = consecutive_flows(frames)
    assert flicker(frames, flows) < 0.5  # the camera moves, but nothing flickers
    still = [np.full((48, 64, 3), 100, np.uint8), np.full((48, 64, 3), 110, np.uint8)] * 2
    zero = [np.zeros((48, 64, 2), np.float32)] * 3
    assert flicker(still, zero) == pytest.approx(10.0, abs=0.01)
    assert flicker(still[:1], []) == 0.0


def test_batched_frames_match_one_at_a_time(tiny_weights) -> None:
    derainer = Derainer(tiny_weights, device="cpu", precision="fp32")
    frames = panning(3, 66, 50)  # not a multiple of 4: padded and cropped back
    batched = derainer.run_batch(frames)
    for frame, result in zip(frames, batched):
        alone = derainer.run(frame, with_attention=True)
        assert np.abs(result.image.astype(int) - alone.image).max() <= 1
        assert np.allclose(result.attention[-1], alone.attention[-1], atol=1e-4)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_compiled_model_gets_a_full_last_batch_and_the_same_frames(tiny_weights, monkeypatch, compiled) -> None:
    derainer = Derainer(tiny_weights, device="cpu", precision="fp32")
    derainer.compiled = compiled  # what restore_frames reads; compiling itself needs CUDA
    sizes, run_batch = [], derainer.run_batch
    monkeypatch.setattr(derainer, "run_batch", lambda group, **kw: sizes.append(len(group)) or run_batch(group, **kw))
    frames = panning(5, 64, 48)
    restored = list(restore_frames(derainer, frames, batch=2))
    assert sizes == ([2, 2, 2] if compiled else [2, 2, 1])
    assert all(np.array_equal(f, g) and f is not g for (f, _), g in zip(restored, frames))  # copies
    for frame, result in restored:
        assert np.abs(result.image.astype(int) - derainer.run(frame).image).max() <= 1  # as in the test above
        assert len(result.attention) == 1


@pytest.mark.parametrize("working_size", [None, 32])  # 32: frames derained at 42×32, fused at full size
def test_clean_frames_yields_one_frame_per_input(tiny_weights, working_size) -> None:
    derainer = Derainer(tiny_weights, device="cpu", working_size=working_size)
    frames = panning(4, 64, 48)
    fused = list(derainer.clean_frames(iter(frames)))
    single = list(derain_frames(derainer, frames, fuse_frames=False))
    assert len(fused) == len(single) == 4
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in fused)


def test_a_camera_that_refills_one_buffer_gets_the_frames_it_showed(tiny_weights) -> None:
    derainer = Derainer(tiny_weights, device="cpu")
    frames = panning(4, 64, 48)
    buffer = np.empty_like(frames[0])

    def camera():
        for frame in frames:
            buffer[...] = frame  # as a capture loop fills the same array each time
            yield buffer

    fused = list(derainer.clean_frames(camera()))
    assert all(np.array_equal(a, b) for a, b in zip(fused, derainer.clean_frames(frames), strict=True))


def test_fusion_starts_afresh_where_the_frame_size_changes(tiny_weights) -> None:
    derainer = Derainer(tiny_weights, device="cpu")
    first, second = panning(3, 64, 48), panning(3, 80, 56)
    fused = list(derainer.clean_frames(first + second))
    apart = list(derainer.clean_frames(first)) + list(derainer.clean_frames(second))
    assert [f.shape for f in fused] == [(48, 64, 3)] * 3 + [(56, 80, 3)] * 3
    assert all(np.array_equal(a, b) for a, b in zip(fused, apart, strict=True))


def test_an_error_in_the_frame_source_surfaces_through_the_model_thread(tiny_weights) -> None:
    derainer = Derainer(tiny_weights, device="cpu")

    def frames():
        yield from panning(3, 64, 48)
        raise RuntimeError("decoder gave up")

    with pytest.raises(RuntimeError, match="decoder gave up"):
        list(derain_frames(derainer, frames(), radius=2))
