"""The `derain` command line: a thin layer over :mod:`derain`'s Python API."""

from __future__ import annotations

import click

from .. import __version__
from .attention import attention
from .batch import batch
from .bench_cmd import bench_cmd
from .clean import clean
from .eval_cmd import eval_cmd
from .export_cmd import export_cmd
from .synth_cmd import synth_cmd
from .train_cmd import train_cmd
from .video_cmd import synth_video_cmd, video_cmd
from .weights_cmd import weights_cmd

EPILOG = """\b
Exit codes: 0 success, 1 an input could not be processed, 2 bad command line
(unknown option, unusable weights/device), 130 interrupted.
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.version_option(__version__, prog_name="derain")
def main() -> None:
    """Remove raindrops stuck on a window or lens from photos.

    \b
    Quick start:
      derain clean rainy.jpg                  # → rainy_derained.jpg
      derain batch footage/ -o clean/         # a whole tree, resumable
      derain video dashcam.mp4                # → dashcam_derained.mp4, audio kept
      derain attention rainy.jpg              # where the model sees raindrops

    Runs on CUDA (fp16) when present, else on the CPU (bf16 where supported). Run
    `derain COMMAND --help` for examples.
    """


for command in (
    clean,
    batch,
    video_cmd,
    attention,
    weights_cmd,
    synth_cmd,
    synth_video_cmd,
    train_cmd,
    eval_cmd,
    bench_cmd,
    export_cmd,
):
    main.add_command(command)
