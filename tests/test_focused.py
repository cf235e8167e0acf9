"""Drops on a camera focused on the glass: replaced by the blurred scene around them, on request."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from derain import Derainer
from derain.cli import main
from derain.focused import MIN_WINDOW, median_window, remove_focused_drops
from derain.metrics import psnr

HEIGHT, WIDTH = 240, 320
CENTRES = [(y, x) for y in range(30, HEIGHT - 20, 45) for x in range(30, WIDTH - 20, 45)]


def blurred_scene(level: float = 1.0) -> np.ndarray:
    """An out-of-focus scene: smooth colour ramps, H×W×3 float in [0, 1]."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    scene = np.stack([0.3 + 0.4 * xx / WIDTH, 0.5 + 0.2 * np.sin(yy / 40), 0.6 - 0.3 * yy / HEIGHT], axis=-1)
    return scene * level


def with_focused_drops(scene: np.ndarray) -> np.ndarray:
    """``scene`` with sharp drops as a glass-focused camera shows them: a dark rim, a bright centre."""
    rainy = scene.copy()
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    for y, x in CENTRES:
        distance = np.hypot(yy - y, xx - x)
        rainy[distance <= 5] = 0.05
        rainy[distance <= 3] = np.minimum(scene[distance <= 3] + 0.3, 1.0)
    return rainy


def far_from_drops() -> np.ndarray:
    """H×W: pixels more than 15 px from every drop's centre."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.all([np.hypot(yy - y, xx - x) > 15 for y, x in CENTRES], axis=0)


def to_dtype(image: np.ndarray, dtype: type) -> np.ndarray:
    return np.rint(image * np.iinfo(dtype).max).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_sharp_drops_over_a_blurred_scene_give_way_to_it(dtype):
    scene = to_dtype(blurred_scene(), dtype)
    rainy = to_dtype(with_focused_drops(blurred_scene()), dtype)
    out = remove_focused_drops(rainy)
    assert out.dtype == dtype and out.shape == rainy.shape
    as8 = [np.rint(i / np.iinfo(dtype).max * 255).astype(np.uint8) for i in (scene, rainy, out)]
    assert psnr(as8[2], as8[0]) > psnr(as8[1], as8[0]) + 15, "the drops are gone"
    far = far_from_drops()
    assert np.array_equal(out[far], rainy[far]), "pixels no drop is near stay exactly as they were"


def test_a_drop_too_wide_for_the_median_gives_way_at_twice_the_window():
    scene = blurred_scene()
    rainy = scene.copy()
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    window = median_window(HEIGHT, WIDTH)
    wide = np.hypot(yy - 120, xx - 160) <= window * 0.6  # fills more than half of the window's square
    rainy[wide] = 0.05
    scene8, rainy8 = to_dtype(scene, np.uint8), to_dtype(rainy, np.uint8)
    median = cv2.medianBlur(rainy8, window)
    assert np.abs(median[120, 160].astype(int) - scene8[120, 160]).max() > 50, "one look leaves it"
    out = remove_focused_drops(rainy8)
    assert np.abs(out[wide].astype(int) - scene8[wide]).max() <= 12


def test_a_blurred_scene_without_drops_is_left_as_it_is():
    scene = to_dtype(blurred_scene(), np.uint8)
    assert np.array_equal(remove_focused_drops(scene), scene)


def test_lamps_in_a_night_shot_stay():
    scene = blurred_scene(level=0.25)
    night = with_focused_drops(scene)
    night[100:111, 150:161] = 1.0  # a street lamp between the drops, clipped
    rainy = to_dtype(night, np.uint8)
    out = remove_focused_drops(rainy)
    assert np.array_equal(out[100:111, 150:161], rainy[100:111, 150:161])
    y, x = CENTRES[0]
    expected = to_dtype(scene, np.uint8)[y, x - 4].astype(int)
    assert np.abs(rainy[y, x - 4] - expected).max() > 15
    assert np.abs(out[y, x - 4] - expected).max() <= 3, "a drop's dark rim is filled in"


def test_the_window_grows_with_the_photo_and_stays_odd():
    windows = [median_window(h, w) for h, w in ((16, 16), (480, 720), (1080, 1920), (4000, 6000))]
    assert windows[0] == MIN_WINDOW and windows[1] == 15
    assert windows == sorted(windows) and all(w % 2 == 1 for w in windows)


def test_the_engine_fills_in_what_the_network_leaves(tiny_weights):
    rainy = to_dtype(with_focused_drops(blurred_scene()), np.uint8)
    network = Derainer(tiny_weights, device="cpu", precision="fp32").clean(rainy)
    glass = Derainer(tiny_weights, device="cpu", precision="fp32", focus="glass").clean(rainy)
    assert np.array_equal(glass, remove_focused_drops(network))
    assert not np.array_equal(glass, network)
    frames = Derainer(tiny_weights, device="cpu", precision="fp32", focus="glass").run_batch([rainy, rainy])
    assert all(np.array_equal(f.image, glass) for f in frames), "video frames get it too"


def test_an_unknown_focus_is_refused(tiny_weights):
    with pytest.raises(ValueError, match="focus must be one of scene, glass"):
        Derainer(tiny_weights, device="cpu", focus="lens")


def test_the_command_line_takes_focus(tiny_weights, tmp_path: Path):
    src = tmp_path / "rainy.png"
    cv2.imwrite(str(src), to_dtype(with_focused_drops(blurred_scene()), np.uint8))
    model = ["--weights", str(tiny_weights), "--device", "cpu", "--precision", "fp32"]
    ok = CliRunner().invoke(main, ["clean", str(src), "--focus", "glass", *model])
    assert ok.exit_code == 0, ok.output
    written = cv2.imread(str(tmp_path / "rainy_derained.png"))
    network = Derainer(tiny_weights, device="cpu", precision="fp32").clean(cv2.imread(str(src))[..., ::-1])
    assert np.array_equal(written[..., ::-1], remove_focused_drops(network))
    bad = CliRunner().invoke(main, ["clean", str(src), "--focus", "lens", *model])
    assert bad.exit_code == 2 and "'lens' is not one of 'scene', 'glass'" in bad.output
