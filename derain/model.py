"""The Attentive GAN of Qian et al. (CVPR 2018): generator and attentive discriminator.

Module names follow the paper (attentive-recurrent network, contextual autoencoder); the
official release's flat key names are mapped onto them in :mod:`derain.weights`. Every width,
step count and dilation is a constructor argument, so tests can build tiny models and the
shipped weights record the exact configuration they were trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: Height and width of the generator's input must be multiples of this (two stride-2 stages).
SIZE_MULTIPLE = 4


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of :class:`Generator`; the defaults are the paper's (6,244,362 parameters)."""

    steps: int = 4
    """N, the number of attentive-recurrent (ConvLSTM) steps."""
    rnn_width: int = 32
    """Channels of the residual blocks and of the ConvLSTM state."""
    rnn_blocks: int = 5
    """Residual blocks per recurrent step."""
    widths: tuple[int, int, int] = (64, 128, 256)
    """Autoencoder channels at full, 1/2 and 1/4 scale."""
    dilations: tuple[int, ...] = (2, 4, 8, 16)
    """Dilation of each context convolution at 1/4 scale."""
    head_width: int = 32
    """Channels of the last full-scale convolution (conv10) before the output."""
    residual: bool = False
    """Predict a correction added to the input (our training) instead of the image (the paper)."""

    @classmethod
    def from_dict(cls, data: dict) -> GeneratorConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown generator config keys: {sorted(unknown)}")
        values = dict(data)
        for key in ("widths", "dilations"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def conv_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """A 'same'-padded convolution followed by ReLU, the paper's basic layer."""
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation), nn.ReLU())


class ResidualBlock(nn.Module):
    """conv-ReLU-conv-ReLU with an identity shortcut and a ReLU after the sum."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


def lstm_update(
    i: torch.Tensor, f: torch.Tensor, g: torch.Tensor, o: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM state update from the activated gates (input, forget, cell, output): new (h, c)."""
    c = f * c + i * g
    return o * torch.tanh(c), c


class ConvLSTMCell(nn.Module):
    """ConvLSTM with one 3×3 convolution per gate over concat(x, h), as in the official code.

    The four gate convolutions run as one (their weights concatenated): one pass over the
    input instead of four. The state starts at zero in the dtype of ``x``, so under autocast
    it stays in the low precision the convolutions produce instead of bouncing to fp32.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.input_gate = nn.Conv2d(2 * width, width, 3, 1, 1)
        self.forget_gate = nn.Conv2d(2 * width, width, 3, 1, 1)
        self.cell_gate = nn.Conv2d(2 * width, width, 3, 1, 1)
        self.output_gate = nn.Conv2d(2 * width, width, 3, 1, 1)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; ``state`` is (h, c), None for the first step."""
        h, c = (torch.zeros_like(x), torch.zeros_like(x)) if state is None else state
        layers = (self.input_gate, self.forget_gate, self.cell_gate, self.output_gate)
        weight = torch.cat([layer.weight for layer in layers])
        bias = torch.cat([layer.bias for layer in layers])
        gates = F.conv2d(torch.cat((x, h), 1), weight, bias, padding=1)
        # In channels-last each gate's channels are a strided view, on which element-wise ops run up to 4×
        # slower than on a dense copy (one cheap pass): make them dense in the layout the convolution chose.
        channels_last = gates.is_contiguous(memory_format=torch.channels_last)
        dense = torch.channels_last if channels_last else torch.contiguous_format
        i, f, g, o = (gate.contiguous(memory_format=dense) for gate in gates.chunk(4, 1))
        return lstm_update(torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o), c)


class AttentiveRecurrentNetwork(nn.Module):
    """Refines a raindrop attention map over N steps, starting from 0.5 everywhere."""

    #: The attention map every run starts from (the official code's ``ones / 2``).
    initial_attention = 0.5

    def __init__(self, steps: int = 4, width: int = 32, blocks: int = 5, in_channels: int = 3) -> None:
        super().__init__()
        self.steps = steps
        self.stem = conv_relu(in_channels + 1, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))
        self.lstm = ConvLSTMCell(width)
        self.attention_head = nn.Conv2d(width, 1, 3, 1, 1)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        n, _, height, width = image.shape
        attention = image.new_full((n, 1, height, width), self.initial_attention)
        state = None  # the ConvLSTM starts from zeros
        maps = []
        for _ in range(self.steps):
            x = self.blocks(self.stem(torch.cat((image, attention), 1)))
            state = self.lstm(x, state)
            attention = self.attention_head(state[0])
            maps.append(attention)
        return maps


class Upsample(nn.Module):
    """The official 2× upsampling: transposed conv, pad left/top by one, 2×2 mean, ReLU.

    The pad-and-average smooths the checkerboard pattern of the transposed convolution.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
        self.smooth = nn.Sequential(nn.ReflectionPad2d((1, 0, 1, 0)), nn.AvgPool2d(2, stride=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.smooth(self.deconv(x)))


class GeneratorOutput(NamedTuple):
    attention: list[torch.Tensor]
    """A_1 … A_N, N×1×H×W, unbounded (the paper applies no activation)."""
    side_quarter: torch.Tensor | None
    """Side output at 1/4 scale (None when not asked for)."""
    side_half: torch.Tensor | None
    """Side output at 1/2 scale (None when not asked for)."""
    image: torch.Tensor
    """The restored image at full scale."""


class ContextualAutoencoder(nn.Module):
    """U-shaped autoencoder with dilated context convolutions and multi-scale side outputs."""

    def __init__(
        self,
        widths: tuple[int, int, int] = (64, 128, 256),
        dilations: tuple[int, ...] = (2, 4, 8, 16),
        head_width: int = 32,
        channels: int = 3,
        residual: bool = False,
    ) -> None:
        super().__init__()
        w1, w2, w4 = widths
        self.residual = residual
        self.conv1 = conv_relu(channels + 1, w1, kernel=5)
        self.conv2 = conv_relu(w1, w2, stride=2)
        self.conv3 = conv_relu(w2, w2)
        self.conv4 = conv_relu(w2, w4, stride=2)
        self.conv5 = conv_relu(w4, w4)
        self.conv6 = conv_relu(w4, w4)
        self.context = nn.Sequential(*(conv_relu(w4, w4, dilation=d) for d in dilations))
        self.conv7 = conv_relu(w4, w4)
        self.conv8 = conv_relu(w4, w4)
        self.deconv1 = Upsample(w4, w2)
        self.conv9 = conv_relu(w2, w2)
        self.deconv2 = Upsample(w2, w1)
        self.conv10 = conv_relu(w1, head_width)
        self.side_quarter = nn.Conv2d(w4, channels, 3, 1, 1)
        self.side_half = nn.Conv2d(w2, channels, 3, 1, 1)
        self.output = nn.Conv2d(head_width, channels, 3, 1, 1)

    def _side(self, head: nn.Conv2d, x: torch.Tensor, image: torch.Tensor, scale: int) -> torch.Tensor:
        if self.residual:
            return F.avg_pool2d(image, scale) + head(x)
        return F.relu(head(x))

    def forward(
        self, image: torch.Tensor, attention: torch.Tensor, side_outputs: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(side_quarter, side_half, image); the side outputs only serve the training loss, so
        inference leaves them out (``side_outputs=False``: None)."""
        full = self.conv1(torch.cat((image, attention), 1))
        half = self.conv3(self.conv2(full))
        x = self.conv6(self.conv5(self.conv4(half)))
        x = self.conv8(self.conv7(self.context(x)))
        side_quarter = self._side(self.side_quarter, x, image, 4) if side_outputs else None
        x = self.conv9(self.deconv1(x) + half)
        side_half = self._side(self.side_half, x, image, 2) if side_outputs else None
        x = self.output(self.conv10(self.deconv2(x) + full))
        if self.residual:
            x = x + image
        return side_quarter, side_half, x


class Generator(nn.Module):
    """Attentive-recurrent network followed by the contextual autoencoder.

    Takes images in [0, 1], N×3×H×W with H, W multiples of :data:`SIZE_MULTIPLE`, in the channel
    order the weights were trained with (BGR for the official release).
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config or GeneratorConfig()
        cfg = self.config
        self.attentive_rnn = AttentiveRecurrentNetwork(cfg.steps, cfg.rnn_width, cfg.rnn_blocks)
        self.autoencoder = ContextualAutoencoder(cfg.widths, cfg.dilations, cfg.head_width, residual=cfg.residual)

    def set_steps(self, steps: int) -> None:
        """Unroll the attentive-recurrent network for ``steps`` steps (its weights are shared across steps)."""
        self.config = replace(self.config, steps=steps)
        self.attentive_rnn.steps = steps

    def forward(self, image: torch.Tensor, side_outputs: bool = True) -> GeneratorOutput:
        """Attention maps and restored image; ``side_outputs=False`` skips the two side outputs,
        which only the training loss needs."""
        maps = self.attentive_rnn(image)
        return GeneratorOutput(maps, *self.autoencoder(image, maps[-1], side_outputs))


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of :class:`AttentiveDiscriminator` (the paper's widths by default)."""

    widths: tuple[int, ...] = (8, 16, 64, 128, 128, 128)
    tail: tuple[int, int] = (64, 32)
    hidden: int = 1024
    kernel: int = 5


class AttentiveDiscriminator(nn.Module):
    """Judges real vs restored while predicting where it looks (the map D_map).

    The fully connected part is preceded by global average pooling so any crop size works;
    the paper fixes the input size instead, which its public release never made runnable.
    """

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        cfg = config or DiscriminatorConfig()
        pad = cfg.kernel // 2
        chans = (3, *cfg.widths)
        self.features = nn.Sequential(
            *(
                layer
                for a, b in zip(chans[:-1], chans[1:])
                for layer in (nn.Conv2d(a, b, cfg.kernel, 1, pad), nn.ReLU())
            )
        )
        self.last_feature = nn.Sequential(nn.Conv2d(chans[-1], chans[-1], cfg.kernel, 1, pad), nn.ReLU())
        self.map_head = nn.Conv2d(chans[-1], 1, cfg.kernel, 1, pad)
        t1, t2 = cfg.tail
        self.tail = nn.Sequential(
            nn.Conv2d(chans[-1], t1, cfg.kernel, 4, pad), nn.ReLU(), nn.Conv2d(t1, t2, cfg.kernel, 4, pad), nn.ReLU()
        )
        self.classifier = nn.Sequential(nn.Linear(t2, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logit that the image is clean and real, attention map D_map)."""
        x = self.features(image)
        attention = self.map_head(x)
        x = self.last_feature(x) * attention
        x = self.tail(x).mean(dim=(2, 3))
        return self.classifier(x).squeeze(1), attention


def init_for_training(model: Generator) -> None:
    """Fresh-training initialisation that keeps signals alive through the deep recurrent stack.

    He-normal convolutions, zero biases, forget-gate bias 1 (the ConvLSTM starts by remembering),
    and zero output heads in residual mode so training starts from the identity.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    for block in model.attentive_rnn.blocks:
        nn.init.zeros_(block.body[2].weight)  # each residual block starts as the identity
    nn.init.ones_(model.attentive_rnn.lstm.forget_gate.bias)
    if model.config.residual:
        ae = model.autoencoder
        for layer in (ae.side_quarter, ae.side_half, ae.output):
            nn.init.zeros_(layer.weight)
