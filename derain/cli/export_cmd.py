"""derain export: the generator as an ONNX file for deployment."""

from __future__ import annotations

from pathlib import Path

import click

from ..engine import MAX_STEPS
from ..export import export_onnx, require
from ..weights import WeightsError
from .common import BadSetup, console, friendly


@click.command("export")
@click.argument("output", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--weights",
    "-w",
    default=None,
    metavar="NAME|PATH",
    help="Shipped weights by name, or a file: ours, a training checkpoint, or the official gen.pkl.  "
    "[default: shipped default]",
)
@click.option(
    "--steps",
    default=None,
    type=click.IntRange(1, MAX_STEPS),
    metavar="N",
    help="Attentive-recurrent steps baked into the graph.  [default: the weights' own]",
)
@friendly
def export_cmd(output: Path, weights: str | None, steps: int | None) -> None:
    """Write the model as ONNX (fp32, opset 17) for onnxruntime, TensorRT and friends.

    The graph takes one input, "image": N×3×H×W float32 RGB in [0, 1] with H and W
    multiples of 4 (any batch and size), and returns "derained" (N×3×H×W RGB in [0, 1])
    and "attention" (N×steps×H×W). Weights trained on BGR, like the official gen.pkl, are
    wrapped so the file speaks RGB too; the weights' name, channel order and step count
    are in the model's metadata.

    \b
    Examples:
      derain export derain.onnx
      derain export official.onnx --weights gen.pkl --steps 4
    """
    if output.suffix.lower() != ".onnx":  # a slip such as `derain export photo.jpg` would replace the photo
        raise BadSetup(f"{output}: the file to write must end in .onnx (e.g. derain.onnx)")
    try:
        require("onnx")
    except ImportError as exc:
        raise BadSetup(str(exc)) from None
    try:
        with console.status("Exporting…"):
            metadata = export_onnx(output, weights, steps)
    except WeightsError as exc:
        raise BadSetup(str(exc)) from None
    console.print(
        f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB): weights {metadata['weights']}, "
        f"{metadata['steps']} steps, RGB in and out"
    )
