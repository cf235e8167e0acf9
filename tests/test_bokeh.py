"""Night bokeh of drops: bright discs of one size, filled in on request; lamps and the rest stay."""

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from derain import Derainer
from derain.bokeh import LUMA, MIN_DISCS, SIZE_SPREAD, Disc, bokeh_size, find_discs, lamps, remove_bokeh
from derain.cli import main

HEIGHT, WIDTH = 240, 360
RADIUS = 7
LAMP = (40, 300, 16)  # centre and radius of a clipped street lamp, far wider than the discs


def night_scene() -> np.ndarray:
    """A dim, plain night scene: a soft ramp with faint texture, H×W×3 float in [0, 1]."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    texture = 0.01 * np.sin(xx / 3) * np.sin(yy / 5)
    return np.stack([0.10 + 0.05 * xx / WIDTH, 0.12 + 0.03 * yy / HEIGHT, 0.15 + 0 * xx], axis=-1) + texture[..., None]


def centres(count: int) -> list[tuple[int, int]]:
    """``count`` disc centres on a jittered grid, apart from each other and from the lamp."""
    rng = np.random.default_rng(3)
    grid = [(y, x) for y in range(25, HEIGHT - 20, 38) for x in range(25, WIDTH - 20, 38)]
    grid = [(y, x) for y, x in grid if np.hypot(y - LAMP[0], x - LAMP[1]) > 45]
    return [(y + int(rng.integers(-4, 5)), x + int(rng.integers(-4, 5))) for y, x in grid[:count]]


def with_bokeh(scene: np.ndarray, spots: list[tuple[int, int]]) -> np.ndarray:
    """``scene`` with a disc of lamp light (a soft edge, a brighter rim) over it at each spot."""
    out = scene.copy()
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    for y, x in spots:
        distance = np.hypot(yy - y, xx - x)
        disc = np.clip(RADIUS + 0.5 - distance, 0.0, 1.0) * (0.45 + 0.15 * (distance > RADIUS - 2))
        out += disc[..., None] * np.array([1.0, 0.95, 0.8])
    return np.clip(out, 0.0, 1.0)


def near(spots: list[tuple[int, int]], reach: float) -> np.ndarray:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.any([np.hypot(yy - y, xx - x) <= reach for y, x in spots], axis=0)


def to_dtype(image: np.ndarray, dtype: type) -> np.ndarray:
    return np.rint(image * np.iinfo(dtype).max).astype(dtype)


def error(image: np.ndarray, scene: np.ndarray, where: np.ndarray) -> float:
    """Mean absolute difference of ``image`` from ``scene`` over the pixels ``where`` says."""
    return float(np.abs(image[where].astype(float) - scene[where]).mean())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_field_of_bokeh_is_filled_in_and_the_rest_stays(dtype):
    spots = centres(18)
    scene, night = to_dtype(night_scene(), dtype), to_dtype(with_bokeh(night_scene(), spots), dtype)
    out = remove_bokeh(night)
    assert out.dtype == dtype and out.shape == night.shape
    discs = near(spots, RADIUS)
    assert error(out, scene, discs) < 0.1 * error(night, scene, discs), "the discs are gone"
    far = ~near(spots, 3 * RADIUS)
    assert np.array_equal(out[far], night[far]), "pixels away from the discs stay exactly as they were"


def test_the_discs_are_found_at_their_size():
    spots = centres(18)
    luma = with_bokeh(night_scene(), spots).astype(np.float32) @ LUMA
    discs = find_discs(luma)
    size = bokeh_size(discs)
    assert size is not None and RADIUS / 2 < size < RADIUS * 1.5
    found = [d for d in discs if abs(np.log(d.radius / size)) < np.log(SIZE_SPREAD)]
    assert len(found) == len(spots)
    for y, x in spots:  # each centred to within a pixel
        assert min(np.hypot(d.y - y, d.x - x) for d in found) < 1.0


def test_a_few_bright_discs_are_no_field_of_bokeh():
    night = to_dtype(with_bokeh(night_scene(), centres(MIN_DISCS - 1)), np.uint8)
    assert np.array_equal(remove_bokeh(night), night)
    assert bokeh_size([Disc(0.5, 5.0, 10.0, 10.0)] * (MIN_DISCS - 1)) is None


def test_a_photo_without_discs_is_left_as_it_is():
    scene = to_dtype(night_scene(), np.uint8)
    assert np.array_equal(remove_bokeh(scene), scene)


@pytest.mark.parametrize("side", [1, 8, 30])
def test_a_thumbnail_is_left_as_it_is(side):
    image = np.random.default_rng(side).integers(0, 256, (side, side + 5, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no empty ring sectors to divide by
        assert np.array_equal(remove_bokeh(image), image)


def test_lamps_stay():
    night = with_bokeh(night_scene(), centres(18))
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    lamp = np.hypot(yy - LAMP[0], xx - LAMP[1]) <= LAMP[2]
    night[lamp] = 1.0
    night8 = to_dtype(night, np.uint8)
    out = remove_bokeh(night8)
    assert np.array_equal(out[lamp], night8[lamp])
    assert not np.array_equal(out, night8), "the bokeh around it is still filled in"


def test_lamps_are_clipped_areas_wider_than_a_disc():
    pixels = np.full((HEIGHT, WIDTH, 3), 30, np.uint8)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    lamp = np.hypot(yy - LAMP[0], xx - LAMP[1]) <= LAMP[2]
    clipped_disc = np.hypot(yy - 150, xx - 100) <= RADIUS  # the brightest bokeh clips too
    pixels[lamp | clipped_disc] = 255
    found = lamps(pixels, RADIUS) > 0
    assert found[lamp].all() and not found[clipped_disc].any()
    glow = np.hypot(yy - LAMP[0], xx - LAMP[1]) <= LAMP[2] + 5
    assert found[glow].all(), "and the glow around a lamp"


def test_a_large_photo_is_searched_at_the_detection_size():
    spots = centres(18)
    night = to_dtype(with_bokeh(night_scene(), spots), np.uint8)
    size = (WIDTH * 3, HEIGHT * 3)
    big = cv2.resize(night, size, interpolation=cv2.INTER_CUBIC)
    scene = cv2.resize(to_dtype(night_scene(), np.uint8), size, interpolation=cv2.INTER_CUBIC)
    discs = cv2.resize(near(spots, RADIUS).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    assert error(remove_bokeh(big), scene, discs) < 0.1 * error(big, scene, discs)


def test_the_engine_fills_in_what_the_network_leaves(tiny_weights):
    night = to_dtype(with_bokeh(night_scene(), centres(18)), np.uint8)
    settings = {"device": "cpu", "precision": "fp32"}
    network = Derainer(tiny_weights, **settings).clean(night)
    filled = Derainer(tiny_weights, bokeh=True, **settings).clean(night)
    assert np.array_equal(filled, remove_bokeh(network))
    assert not np.array_equal(filled, network)
    frames = Derainer(tiny_weights, bokeh=True, **settings).run_batch([night, night])
    assert all(np.array_equal(f.image, filled) for f in frames), "video frames get it too"
    with pytest.raises(TypeError, match="bokeh must be True or False"):
        Derainer(tiny_weights, bokeh="yes", **settings)


def test_the_command_line_takes_bokeh(tiny_weights, tmp_path: Path):
    src = tmp_path / "night.png"
    cv2.imwrite(str(src), to_dtype(with_bokeh(night_scene(), centres(18)), np.uint8)[..., ::-1])
    model = ["--weights", str(tiny_weights), "--device", "cpu", "--precision", "fp32"]
    ok = CliRunner().invoke(main, ["clean", str(src), "--bokeh", *model])
    assert ok.exit_code == 0, ok.output
    written = cv2.imread(str(tmp_path / "night_derained.png"))
    network = Derainer(tiny_weights, device="cpu", precision="fp32").clean(cv2.imread(str(src))[..., ::-1])
    assert np.array_equal(written[..., ::-1], remove_bokeh(network))
