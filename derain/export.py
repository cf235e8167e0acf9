"""ONNX export for deployment: any weights ``derain`` loads, as one self-describing graph.

The graph has one input, ``image``: N×3×H×W float32 RGB in [0, 1], H and W multiples of 4,
batch, height and width dynamic. Its outputs are ``derained`` (N×3×H×W RGB in [0, 1]) and
``attention`` (N×steps×H×W in [0, 1], the last map is the final one). Weights trained on BGR
(the official ``gen.pkl``) get their channel swaps inside the graph, so every exported file
speaks RGB. The weights' name, their own channel order and the step count go into the
model's metadata.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .imageio import write_atomic
from .model import SIZE_MULTIPLE, Generator
from .weights import load_weights, resolve_shipped

#: ONNX opset of the exported graph (onnxruntime ≥ 1.12, TensorRT ≥ 8.5 run it).
OPSET = 17
INPUT = "image"
OUTPUTS = ("derained", "attention")
EXTRA_HINT = 'needs the export extra: pip install "derain[export]"'


def require(module: str) -> None:
    """Raise ImportError with the install hint when an optional package of the extra is missing."""
    try:
        __import__(module)
    except ImportError:
        raise ImportError(f"{module} is not installed; this {EXTRA_HINT}") from None


class Deployable(nn.Module):
    """The generator behind an RGB-in, RGB-out interface with outputs clamped to [0, 1]."""

    def __init__(self, model: Generator, bgr: bool) -> None:
        super().__init__()
        self.model = model
        self.bgr = bgr

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(image.flip(1) if self.bgr else image, side_outputs=False)
        derained = out.image.flip(1) if self.bgr else out.image
        return derained.clamp(0, 1), torch.cat(out.attention, 1).clamp(0, 1)


def export_onnx(path: Path, weights: str | Path | None = None, steps: int | None = None) -> dict[str, str]:
    """Write the fp32 ONNX graph of ``weights`` to ``path`` (atomically); returns its metadata."""
    require("onnx")
    import onnx

    model, info = load_weights(weights)
    if steps is not None:
        model.set_steps(steps)
    model = model.float().eval().requires_grad_(False)
    sample = torch.rand(1, 3, 16 * SIZE_MULTIPLE, 24 * SIZE_MULTIPLE)
    dims = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and constant-folding notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Deployable(model, info.channel_order == "BGR"),
            (sample,),
            buffer,
            dynamo=False,  # the torch.export-based exporter would add onnxscript to the extra
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes={name: dims for name in (INPUT, *OUTPUTS)},
            opset_version=OPSET,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    metadata = {
        "input": f"{INPUT}: N×3×H×W float32 RGB in [0, 1], H and W multiples of {SIZE_MULTIPLE}",
        "outputs": "derained: N×3×H×W RGB in [0, 1]; attention: N×steps×H×W in [0, 1]",
        "input_channel_order": "RGB",
        "weights_channel_order": info.channel_order,
        "steps": str(model.config.steps),
        "weights": Path(info.source if weights else resolve_shipped(None)).name,
        "producer": f"derain {__version__}",
    }
    onnx.helper.set_model_props(graph, metadata)
    graph.doc_string = "Raindrop removal (Attentive GAN, Qian et al. CVPR 2018), exported by derain"
    write_atomic(Path(path), graph.SerializeToString())
    return metadata
