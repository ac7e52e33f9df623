"""``slas data check|split``: check editing pairs alone, before any run or model; hold out whole products."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

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


@app.command("split")
def split(
    path: Annotated[Path, typer.Argument(help="pairs .jsonl/.csv, or a folder with persons/ and products/")],
    out: Annotated[Path, typer.Option("--out", help="the pairs .jsonl to write (paths relative to its folder)")],
    held_out: Annotated[float, typer.Option("--held-out", metavar="FRACTION",
                                            help="fraction of the PRODUCTS held out, with all their pairs")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="which products are held out (same seed, same split)")] = 0,
    held_out_split: Annotated[Literal["test", "val"], typer.Option("--as", help="the split the held-out pairs get")] = "test",
    min_size: Annotated[int, typer.Option("--min-size", min=1, metavar="N", help="shortest photo side accepted, px")]
    = DEFAULT_MIN_IMAGE_SIZE,
) -> None:
    """Write a pairs .jsonl in which a seeded fraction of the products, with every pair of theirs, is held out
    (split test or val) and the rest is train: held-out products are never trained on. The source is checked
    whole first (as `slas data check`); the splits it had are replaced."""
    from slas.editing.data import load_pairs, pairs_jsonl, split_by_product
    from slas.files import write_atomic

    if out.suffix.lower() != ".jsonl":
        raise typer.BadParameter(f"{out}: write a .jsonl file", param_hint="--out")
    train, held = split_by_product(load_pairs(path, min_size=min_size), held_out, seed)
    pairs = [replace(p, split="train") for p in train] + [replace(p, split=held_out_split) for p in held]
    write_atomic(out, pairs_jsonl(pairs, out.parent))
    typer.echo(f"{out}: train {len(train)} pairs ({len({p.product for p in train})} products), {held_out_split} "
               f"{len(held)} pairs ({len({p.product for p in held})} products, never in train)")
