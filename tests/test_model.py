import torch
import torch.nn.functional as F

from derain.model import AttentiveDiscriminator, Generator, GeneratorConfig
from derain.weights import to_official

from .conftest import TINY, tiny_model


def test_default_generator_has_the_papers_parameter_count():
    assert sum(p.numel() for p in Generator().parameters()) == 6_244_362


def test_output_shapes_follow_the_config():
    out = tiny_model()(torch.rand(2, 3, 24, 32))
    assert len(out.attention) == TINY.steps
    assert all(a.shape == (2, 1, 24, 32) for a in out.attention)
    assert out.side_quarter.shape == (2, 3, 6, 8)
    assert out.side_half.shape == (2, 3, 12, 16)
    assert out.image.shape == (2, 3, 24, 32)


def test_inference_without_side_outputs_gives_the_same_image():
    model, x = tiny_model().eval(), torch.rand(1, 3, 24, 32)
    with torch.inference_mode():
        full, lean = model(x), model(x, side_outputs=False)
    assert lean.side_quarter is None and lean.side_half is None
    assert torch.equal(lean.image, full.image)
    assert all(torch.equal(a, b) for a, b in zip(lean.attention, full.attention))


def test_config_round_trips_through_a_dict():
    assert GeneratorConfig.from_dict(TINY.to_dict()) == TINY


def test_discriminator_gives_a_logit_and_a_map_for_any_size():
    logit, attention = AttentiveDiscriminator()(torch.rand(2, 3, 40, 56))
    assert logit.shape == (2,)
    assert attention.shape == (2, 1, 40, 56)


def _official_forward(sd: dict, x: torch.Tensor, steps: int = 4) -> torch.Tensor:
    """The paper's generator written flat over the official key names, as an independent reference."""

    def conv(name, t, stride=1, dilation=1):
        w = sd[f"{name}.weight"]
        return F.conv2d(t, w, sd[f"{name}.bias"], stride, dilation * (w.shape[-1] // 2), dilation)

    def up(name, t):
        t = F.conv_transpose2d(t, sd[f"{name}.0.weight"], sd[f"{name}.0.bias"], 2, 1)
        return F.relu(F.avg_pool2d(F.pad(t, (1, 0, 1, 0), mode="reflect"), 2, 1))

    n, _, h, w = x.shape
    mask = torch.full((n, 1, h, w), 0.5)
    hs = torch.zeros(n, 32, h, w)
    c = torch.zeros_like(hs)
    for _ in range(steps):
        t = F.relu(conv("det_conv0.0", torch.cat((x, mask), 1)))
        for k in range(1, 6):
            t = F.relu(F.relu(conv(f"det_conv{k}.2", F.relu(conv(f"det_conv{k}.0", t)))) + t)
        th = torch.cat((t, hs), 1)
        i, f = torch.sigmoid(conv("conv_i.0", th)), torch.sigmoid(conv("conv_f.0", th))
        g, o = torch.tanh(conv("conv_g.0", th)), torch.sigmoid(conv("conv_o.0", th))
        c = f * c + i * g
        hs = o * torch.tanh(c)
        mask = conv("det_conv_mask.0", hs)
    t = F.relu(conv("conv1.0", torch.cat((x, mask), 1)))
    res1 = t
    t = F.relu(conv("conv3.0", F.relu(conv("conv2.0", t, stride=2))))
    res2 = t
    t = F.relu(conv("conv4.0", t, stride=2))
    for name in ("conv5.0", "conv6.0"):
        t = F.relu(conv(name, t))
    for k, d in enumerate((2, 4, 8, 16), 1):
        t = F.relu(conv(f"diconv{k}.0", t, dilation=d))
    for name in ("conv7.0", "conv8.0"):
        t = F.relu(conv(name, t))
    t = F.relu(conv("conv9.0", up("deconv1", t) + res2))
    t = F.relu(conv("conv10.0", up("deconv2", t) + res1))
    return conv("output.0", t)


def test_generator_matches_the_official_architecture_on_official_keys():
    torch.manual_seed(0)
    model = Generator().eval()
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        ours = model(x).image
        reference = _official_forward(to_official(model.state_dict()), x)
    assert torch.allclose(ours, reference, atol=1e-5)
