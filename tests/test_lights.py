"""Light sources: lamps kept by the gate at night; drop highlights and day shots left to it."""

import numpy as np
import pytest
import torch

from derain import Derainer
from derain.engine import apply_gate
from derain.lights import LIGHT_RIM, NIGHT_LEVELS, light_sources

from .conftest import random_image


def night(height: int = 160, width: int = 240) -> torch.Tensor:
    """A dark 3×H×W scene in [0, 1]."""
    return torch.full((3, height, width), 0.1)


def test_a_small_clipped_disc_is_a_light_and_so_is_its_rim():
    image = night()
    yy, xx = torch.meshgrid(torch.arange(160), torch.arange(240), indexing="ij")
    image[:, (yy - 80) ** 2 + (xx - 60) ** 2 <= 6**2] = 1.0  # a street lamp, 13 px across
    lights = light_sources(image)
    assert lights.shape == (160, 240)
    assert lights[80, 60] == 1.0 and lights[80, 60 + 6 + 2] == 1.0, "the lamp and its glow"
    assert 0.0 < lights[80, 60 + 6 + LIGHT_RIM] < 1.0, "a soft edge"
    assert lights[80, 180] == 0.0 and lights[10, 10] == 0.0, "the dark scene elsewhere"


def test_a_speck_is_a_drops_highlight_not_a_light():
    image = night()
    image[:, 100, 30] = 1.0
    image[:, 40:42, 200:202] = 1.0
    assert not light_sources(image).any()
    image[:, 80:90, 20:30] = 1.0  # a lamp beside them
    assert light_sources(image)[85, 25] == 1.0


def test_lamps_are_kept_at_night_only():
    """By day a clipped disc is most likely a drop's highlight over a bright scene."""
    for level, kept in ((0.1, 1.0), (NIGHT_LEVELS[1] + 0.05, 0.0)):
        image = torch.full((3, 160, 240), level)
        image[:, 70:80, 50:60] = 1.0
        assert light_sources(image)[75, 55] == kept
    dusk = torch.full((3, 160, 240), sum(NIGHT_LEVELS) / 2)
    dusk[:, 70:80, 50:60] = 1.0
    assert 0.0 < light_sources(dusk)[75, 55] < 1.0, "between night and day, kept in part"


def test_a_light_must_be_clipped_in_every_channel():
    image = night()
    image[0, 70:90, 50:70] = 1.0  # bright red, blue and green far from clipping: a red drop's bokeh
    assert not light_sources(image).any()


def test_batches_are_searched_image_by_image():
    images = torch.stack([night(), night()])
    images[1, :, 70:80, 50:60] = 1.0
    lights = light_sources(images)
    assert lights.shape == (2, 160, 240)
    assert not lights[0].any() and lights[1, 75, 55] == 1.0


def test_the_gate_keeps_a_lamp_the_network_paints_over():
    image = night()
    image[:, 70:80, 50:60] = 1.0
    output = torch.zeros(3, 160, 240)  # a network that paints everything black
    apply_gate(output, image, torch.ones(160, 240))  # and a map that calls everything a drop
    assert torch.equal(output[:, 75, 55], image[:, 75, 55]), "the lamp stays"
    assert torch.equal(output[:, 75, 200], torch.zeros(3)), "the rest is the network's"


@pytest.mark.parametrize("tile", [0, 64])
def test_a_derainer_keeps_a_lamp_in_a_night_photo_whole_or_tiled(tiny_weights, rng, tile):
    image = (random_image(rng, 96, 128) // 8).astype(np.uint8)  # a dark, textured night scene
    image[40:52, 60:72] = 255
    kept = Derainer(tiny_weights, device="cpu", precision="fp32", tile=tile, tile_overlap=32, gate=True).clean(image)
    raw = Derainer(tiny_weights, device="cpu", precision="fp32", tile=tile, tile_overlap=32, gate=False).clean(image)
    assert (kept[40:52, 60:72] == 255).all(), "the lamp stays"
    assert not (raw[40:52, 60:72] == 255).all(), "where the network alone would change it"
