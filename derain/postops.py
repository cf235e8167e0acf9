"""CPU inference: convolutions run as oneDNN calls with the activation after them fused in.

Eager PyTorch runs each activation as a second pass over the convolution's output, a full read
and write of every activation (most of the model's layers are conv + ReLU; the ConvLSTM's gates
are conv + sigmoid or tanh). oneDNN applies it as a post-op while the output is still in
registers: for ReLU the same result bit for bit, for the gates one rounding fewer. This is the
kernel ``torch.compile`` itself uses on CPU, called directly, so start-up stays instant.

The fused layers hold their weights in the compute dtype (bf16 or fp32), so under autocast
they also skip the per-call weight conversion; inputs are cast to that dtype as autocast would.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .model import AttentiveRecurrentNetwork, ConvLSTMCell


class FusedConv(nn.Module):
    """An ``nn.Conv2d`` and the activation after it (``relu``, ``sigmoid``, ``tanh``) as one
    oneDNN convolution (CPU only)."""

    def __init__(self, conv: nn.Conv2d, activation: str, dtype: torch.dtype) -> None:
        super().__init__()
        weight = conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().to(dtype))
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding, stride, dilation, groups, activation = self.args
        x = x.to(self.weight.dtype)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, padding, stride, dilation, groups, activation, [], ""
        )


class FusedConvLSTMCell(nn.Module):
    """:class:`~derain.model.ConvLSTMCell`'s step with each gate's activation fused into its
    convolution: four dense gate tensors come out, no separate sigmoid/tanh passes."""

    def __init__(self, cell: ConvLSTMCell, dtype: torch.dtype) -> None:
        super().__init__()
        self.input_gate = FusedConv(cell.input_gate, "sigmoid", dtype)
        self.forget_gate = FusedConv(cell.forget_gate, "sigmoid", dtype)
        self.cell_gate = FusedConv(cell.cell_gate, "tanh", dtype)
        self.output_gate = FusedConv(cell.output_gate, "sigmoid", dtype)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = (torch.zeros_like(x), torch.zeros_like(x)) if state is None else state
        xh = torch.cat((x, h), 1)
        return fast_lstm_update(self.input_gate(xh), self.forget_gate(xh), self.cell_gate(xh), self.output_gate(xh), c)


def fast_lstm_update(
    i: torch.Tensor, f: torch.Tensor, g: torch.Tensor, o: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~derain.model.lstm_update` in fewer, cheaper passes: the new cell state in one
    ``addcmul`` instead of three passes, and tanh(c) as 2σ(2c) − 1, since PyTorch's CPU tanh is
    about 3× slower than its sigmoid in bf16. 10.2 → 6.7 ms a step for a 720×480×32 state."""
    c = torch.addcmul(f * c, i, g)
    return torch.addcmul(-o, o, torch.sigmoid(2 * c), value=2), c


class ShortcutAdd(nn.Module):
    """A residual block of the attentive-recurrent network as its (fused) body plus the shortcut,
    added in place, without :class:`~derain.model.ResidualBlock`'s ReLU after the sum.

    There a block's input is a ReLU's output (the stem's or the previous block's) and its body ends
    in a ReLU, so the sum of two non-negative tensors is its own ReLU, bit for bit: one pass over
    memory and one allocation fewer per block and step (1.5 % of a 720×480 pass on 2 cores).
    """

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).add_(x)


def fusable(conv: nn.Module) -> bool:
    """A plain 2-D convolution oneDNN can take as is (zero padding given in pixels)."""
    return isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


@functools.cache
def available(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build and CPU run the fused kernel in ``dtype`` (a private op)."""
    try:
        conv = FusedConv(nn.Conv2d(1, 1, 3, padding=1), "relu", dtype)
        conv(torch.zeros(1, 1, 4, 4))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def fuse_for_cpu(model: nn.Module, dtype: torch.dtype) -> int:
    """Replace, in place, every Conv2d directly followed by a ReLU inside an ``nn.Sequential``
    with a :class:`FusedConv` (the ReLU becomes an identity), every ConvLSTM cell with a
    :class:`FusedConvLSTMCell`, the attentive-recurrent network's residual blocks with
    :class:`ShortcutAdd`, and the remaining convolutions (the heads, with no activation) with a
    :class:`FusedConv` too, whose weights are already in the compute dtype (12 % faster for the
    one-channel attention head); returns how many modules were replaced (none where the kernel is
    missing: the model then runs unfused, as on other devices)."""
    if not available(dtype):
        return 0
    fused = 0
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        layers = list(sequential)
        for k in range(len(layers) - 1):
            if fusable(layers[k]) and isinstance(layers[k + 1], nn.ReLU):
                sequential[k] = FusedConv(layers[k], "relu", dtype)
                sequential[k + 1] = nn.Identity()
                fused += 1
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, ConvLSTMCell):
                setattr(parent, name, FusedConvLSTMCell(child, dtype))
                fused += 1
    for network in [m for m in model.modules() if isinstance(m, AttentiveRecurrentNetwork)]:
        for k, block in enumerate(network.blocks):
            network.blocks[k] = ShortcutAdd(block.body)
            fused += 1
    for parent in list(model.modules()):  # last: the cells' gates are fused with their activations above
        for name, child in parent.named_children():
            if fusable(child):
                setattr(parent, name, FusedConv(child, "none", dtype))
                fused += 1
    return fused
