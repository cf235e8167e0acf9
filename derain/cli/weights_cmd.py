"""derain weights: what is shipped."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from ..weights import WeightsError, read_manifest, shipped_dir
from .common import BadSetup


@click.command("weights")
def weights_cmd() -> None:
    """List the shipped weights: name, size, sha256, training data and validation scores.

    \b
    Example:
      derain weights                          # then: derain clean rainy.jpg -w NAME
    """
    try:
        manifest = read_manifest()
    except WeightsError as exc:
        raise BadSetup(str(exc)) from None
    table = Table(title=f"Shipped weights ({shipped_dir()})")
    for column in ("name", "file", "MB", "sha256", "trained on", "validation"):
        table.add_column(column, overflow="fold")
    for name, entry in sorted(manifest["files"].items()):
        default = " (default)" if name == manifest.get("default") else ""
        table.add_row(
            name + default,
            entry["file"],
            f"{entry['size'] / 1e6:.1f}",
            entry["sha256"],
            entry.get("trained_on", ""),
            entry.get("validation", ""),
        )
    Console().print(table)
