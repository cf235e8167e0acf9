import torch

from derain import colour
from derain.colour import CHROMA_RADIUS, CHROMA_SLACK, NOISE_BOX, cap_colour, colour_bound, colourfulness
from derain.engine import apply_gate


def _grey_photo_with_a_red_patch(size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat grey input, and an output that paints a saturated red square in its middle."""
    image = torch.full((1, 3, size, size), 0.5)
    output = image.clone()
    output[:, :, 40:56, 40:56] = torch.tensor([0.8, 0.3, 0.3]).view(1, 3, 1, 1)
    return image, output


def test_a_colour_the_input_does_not_show_nearby_is_brought_towards_grey_at_the_same_brightness():
    image, output = _grey_photo_with_a_red_patch()
    before = output.clone()
    cap_colour(output, image)
    assert colourfulness(output).max() <= CHROMA_SLACK + 1e-6
    torch.testing.assert_close(output.mean(1), before.mean(1), atol=1e-6, rtol=0)
    assert (output[0, 0, 48, 48] > output[0, 1, 48, 48]).item(), "still reddish: its hue is kept"


def test_a_colour_the_input_shows_nearby_is_kept():
    image, output = _grey_photo_with_a_red_patch()
    stripe = slice(56, 56 + NOISE_BOX)  # a red stripe along its side: all of it within the radius
    image[:, :, 40:56, stripe] = torch.tensor([0.8, 0.3, 0.3]).view(1, 3, 1, 1)
    before = output.clone()
    cap_colour(output, image)
    torch.testing.assert_close(output, before, atol=1e-6, rtol=0)


def test_the_bound_reaches_the_radius_and_not_much_further():
    image = torch.full((1, 3, 128, 128), 0.5)
    image[:, :, 62:67, 62:67] = torch.tensor([0.9, 0.2, 0.4]).view(1, 3, 1, 1)  # a coloured speck of 5 px
    bound = colour_bound(image)[0, 0]
    assert bound[64, 64 + CHROMA_RADIUS] > 0.2 and bound[64 - CHROMA_RADIUS, 64] > 0.2
    assert bound[64, 64 + 2 * CHROMA_RADIUS] == CHROMA_SLACK and bound[0, 0] == CHROMA_SLACK


def test_channel_order_and_batch_shape_do_not_matter():
    image, output = _grey_photo_with_a_red_patch()
    image[:, :, 10:20, 10:20] = torch.tensor([0.2, 0.6, 0.7]).view(1, 3, 1, 1)
    rgb = output.clone()
    cap_colour(rgb, image)
    bgr = output.flip(1)
    cap_colour(bgr, image.flip(1))
    torch.testing.assert_close(bgr.flip(1), rgb)
    single = output[0].clone()
    cap_colour(single, image[0])
    torch.testing.assert_close(single, rgb[0])


def test_the_gate_caps_the_colour_it_takes_from_the_network():
    image, output = _grey_photo_with_a_red_patch()
    apply_gate(output, image, torch.ones(1, 96, 96))  # the map takes the network's output everywhere
    assert colourfulness(output).max() <= CHROMA_SLACK + 1e-6


def test_band_by_band_the_cap_is_the_whole_image_s(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 150, 90, generator=generator).mul_(0.3).add_(0.35)
    image[:, :, 60:64] = torch.tensor([0.9, 0.1, 0.2]).view(1, 3, 1, 1)  # coloured rows near a band's edge
    output = torch.rand(2, 3, 150, 90, generator=generator)
    whole = output.clone()
    cap_colour(whole, image)
    monkeypatch.setattr(colour, "BAND", 32)  # five bands, each with its halo
    banded = output.clone()
    cap_colour(banded, image)
    assert not torch.equal(whole, output), "the cap did something"
    assert torch.equal(banded, whole)
