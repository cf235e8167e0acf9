"""derain weights: what is shipped."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from ..weights import WeightsError, read_manifest, shipped_dir
from .common import BadSetup, make_console


@click.command("weights")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON, for scripts (a checksum check).")
def weights_cmd(as_json: bool) -> None:
    """List the shipped weights: name, size, sha256, training data and validation scores.

    \b
    Examples:
      derain weights                          # then: derain clean rainy.jpg -w NAME
      derain weights --json                   # name, default, file, size, sha256, …
    """
    try:
        manifest = read_manifest()
    except WeightsError as exc:
        raise BadSetup(str(exc)) from None
    entries = sorted(manifest["files"].items())
    if as_json:
        listed = [{"name": name, "default": name == manifest.get("default"), **entry} for name, entry in entries]
        click.echo(json.dumps(listed, indent=2))
        return
    console = make_console()
    console.print(f"Shipped weights in {escape(str(shipped_dir()))}", soft_wrap=True)
    for name, entry in entries:  # one block each: the checksum stays on one line at 80 columns
        default = " [bold](default)[/]" if name == manifest.get("default") else ""
        console.print(f"\n[bold]{escape(name)}[/]{default}  {escape(entry['file'])}, {entry['size'] / 1e6:.1f} MB")
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
        grid.add_row("sha256", entry["sha256"])
        for label, key in (("trained on", "trained_on"), ("validation", "validation")):
            if entry.get(key):
                grid.add_row(label, escape(entry[key]))
        console.print(grid)
