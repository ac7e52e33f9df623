"""``slas data check``: check an editing pairs file or folder alone, before any run or model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slas.cli.common import SlasTyper
from slas.config import DEFAULT_MIN_IMAGE_SIZE

app = SlasTyper(help="Training data: check editing pairs before training on them.")


@app.command("check")
def check(
    path: Annotated[Path, typer.Argument(help="pairs .jsonl/.csv, or a folder with persons/ and products/ "
                                              "(and optionally pairs.jsonl or pairs.csv)")],
    min_size: Annotated[int, typer.Option("--min-size", min=1, metavar="N",
                                          help="shortest photo side accepted, px (data.min_image_size)")] = DEFAULT_MIN_IMAGE_SIZE,
) -> None:
    """Check every row and photo of an editing pairs file or folder: each problem on its own line (file:line
    first), then a summary. Exit code 1 when there is any problem, 0 when the data is clean."""
    from slas.editing.data import check_pairs

    result = check_pairs(path, min_size=min_size)
    for line in result.problems:
        typer.echo(line)
    s = result.summary()
    splits = ", ".join(f"{name} {count}" for name, count in s["splits"].items()) or "none"
    typer.echo(f"{result.source}: {s['rows']} rows, {s['pairs']} usable pairs, {s['persons']} persons, "
               f"{s['products']} products; splits: {splits}; {s['problems']} problems")
    if s["products_in_several_splits"]:
        typer.echo(f"note: {s['products_in_several_splits']} products are in more than one split (held out and "
                   "trained on); slas.editing.data.split_by_product holds out whole products")
    if not result.ok:
        raise typer.Exit(1)
