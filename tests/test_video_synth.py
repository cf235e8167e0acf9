"""Rendered clips: drops fixed on the glass (or sliding down it), the camera's views, fresh noise per frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from derain.fusion import warp
from derain.imageio import ImageError
from derain.synth import REFERENCE_WIDTH
from derain.video_synth import CameraPath, render_clip, synthesize_clips

SIZE = (160, 120)


def photo() -> np.ndarray:
    """A smooth random photo with some fine texture, larger than the frames."""
    rng = np.random.default_rng(5)
    smooth = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (400, 300), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.integers(0, 40, (75, 100, 3), dtype=np.uint8), (400, 300), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth.astype(int) + fine, 0, 255).astype(np.uint8)


def true_flow(views: list[np.ndarray], a: int, b: int) -> np.ndarray:
    """Flow from frame a to frame b implied by the camera's frame → photo maps."""
    w, h = SIZE
    to_photo = np.vstack([views[a], [0, 0, 1]])
    from_photo = np.linalg.inv(np.vstack([views[b], [0, 0, 1]]))
    m = from_photo @ to_photo
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = m[0, 0] * xx + m[0, 1] * yy + m[0, 2], m[1, 0] * xx + m[1, 1] * yy + m[1, 2]
    return np.dstack([x - xx, y - yy]).astype(np.float32)


def test_moving_camera_views_give_the_true_flow() -> None:
    clip = render_clip(photo(), SIZE, 6, np.random.default_rng(3), "moving")
    assert len(clip.rainy) == len(clip.clean) == len(clip.masks) == len(clip.views) == 6
    flow = true_flow(clip.views, 0, 5)
    assert np.median(np.linalg.norm(flow, axis=2)) > 1.0  # the scene really moved
    seen, inside = warp(clip.clean[5].astype(np.float32), flow)
    error = np.abs(seen - clip.clean[0])[inside].mean()
    assert error < np.abs(clip.clean[5].astype(np.float32) - clip.clean[0]).mean() / 3


def test_static_camera_keeps_the_drops_and_draws_fresh_noise() -> None:
    for seed in range(8):
        clip = render_clip(photo(), SIZE, 4, np.random.default_rng(seed), "static")
        if not np.array_equal(clip.clean[0], clip.clean[1]):
            break
    else:
        pytest.fail("no clip with sensor noise in 8 seeds")
    assert clip.camera == CameraPath((0.0, 0.0), 0.0, 0.0) and clip.slide == 0.0
    assert np.abs(clip.clean[0].astype(int) - clip.clean[1]).mean() < 4  # noise only
    assert (clip.masks[0] != clip.masks[3]).mean() < 0.01


def test_sliding_drops_creep_down_the_glass() -> None:
    for seed in range(8):
        clip = render_clip(photo(), SIZE, 16, np.random.default_rng(seed), "static", sliding=True)
        if clip.slide:
            break
    else:
        pytest.fail("no clip with sliding drops in 8 seeds")
    first, last = clip.masks[0] > 0, clip.masks[-1] > 0
    changed = first ^ last  # around the sliding drops
    slid = round(clip.slide * 15 * SIZE[0] / REFERENCE_WIDTH)  # rows moved over the 16 frames
    assert slid > 0 and changed.any()
    went_down = (np.roll(first, slid, axis=0) == last)[changed].mean()
    went_up = (np.roll(first, -slid, axis=0) == last)[changed].mean()
    assert went_down > 0.7 and went_down > went_up + 0.2  # the first frame's drops, lower: the last's
    clean_change = np.abs(clip.clean[-1].astype(int) - clip.clean[0]).mean()
    rainy_change = np.abs(clip.rainy[-1].astype(int) - clip.rainy[0]).mean()
    assert rainy_change > clean_change  # only the drops moved, not the scene


def test_unknown_motion_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown motion"):
        render_clip(photo(), SIZE, 2, np.random.default_rng(0), "dolly")


def test_a_frame_that_cannot_be_written_fails_the_clip(tmp_path) -> None:
    cv2.imwrite(str(tmp_path / "p.png"), photo())
    (tmp_path / "clips" / "0" / "gt" / "1_clean.png").mkdir(parents=True)  # in the way of the second frame
    with pytest.raises(ImageError, match="1_clean.png: cannot write"):
        synthesize_clips([tmp_path / "p.png"], tmp_path / "clips", 1, (32, 24), 2)
    assert not (tmp_path / "clips" / "0" / "clip.json").exists(), "a clip is only complete with its clip.json"


def test_a_frame_size_beyond_the_renderers_memory_is_refused_before_any_work(tmp_path) -> None:
    with pytest.raises(ValueError, match="larger than the renderer takes"):
        synthesize_clips([tmp_path / "none.png"], tmp_path / "clips", 1, (8193, 16), 2)
    assert not (tmp_path / "clips").exists()
