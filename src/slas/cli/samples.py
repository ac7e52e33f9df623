"""``slas samples``: read comparison sets made by ``slas sample`` (list, show, export) without raw SQL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slas.cli.common import SlasTyper

app = SlasTyper(help="Comparison sets made by `slas sample`: list them, show per-checkpoint rewards, export rows.")

SetId = Annotated[int, typer.Argument(metavar="SET_ID", help="sample set id (see `slas samples list`)")]


@app.command("list")
def list_sets() -> None:
    """One line per sample set, newest first: id, status, images, checkpoints, ratings, kind (t2i or edit), name."""
    from slas.platform.db import open_store
    from slas.platform.samplesets import checkpoint_labels, set_kind

    with open_store() as store:
        sets = store.list_sample_sets()
        if not sets:
            typer.echo("no sample sets (make one with `slas sample`)")
            return
        typer.echo(f"{'ID':>4}  {'STATUS':<10} {'IMAGES':>6} {'CKPTS':>5} {'RATINGS':>7}  {'KIND':<4}  NAME")
        for sset in sets:
            samples = store.list_samples(sset.id)
            n_ratings = len(store.list_ratings(sample_set_id=sset.id))
            status = str((sset.meta or {}).get("status", "-"))
            typer.echo(f"{sset.id:>4}  {status:<10} {len(samples):>6} {len(checkpoint_labels(samples)):>5} "
                       f"{n_ratings:>7}  {set_kind(sset, samples):<4}  {sset.name}")


@app.command()
def show(set_id: SetId) -> None:
    """A set's folder, prompts (editing: person/product pairs and where they came from) and seeds, and each
    checkpoint's reward components (mean +- std, min..max)."""
    from slas.platform.db import open_store
    from slas.platform.samplesets import get_set, input_pairs, reward_summary, set_folder, set_kind

    with open_store() as store:
        sset = get_set(store, set_id)
        samples = store.list_samples(sset.id)
        n_ratings = len(store.list_ratings(sample_set_id=sset.id))
    meta = sset.meta or {}
    typer.echo(f"sample set {sset.id}: {sset.name}")
    typer.echo(f"  status:  {meta.get('status', '-')}   images: {len(samples)}   ratings: {n_ratings}")
    typer.echo(f"  folder:  {set_folder(sset, samples) or '-'}")
    seeds = len({s.seed for s in samples})
    if set_kind(sset, samples) == "edit":
        inputs = input_pairs(samples)
        typer.echo(f"  kind:    edit (person + product -> edit)   pairs: {len(inputs)}   seeds: {seeds}")
        if meta.get("pairs_file"):
            typer.echo(f"  pairs:   {meta['pairs_file']} (split {meta.get('split', 'all')})")
        if inputs and inputs[0][0]:
            typer.echo(f"  inputs:  {Path(inputs[0][0]).parent}")
    else:
        typer.echo(f"  prompts: {len({s.prompt for s in samples})}   seeds: {seeds}")
    summary = reward_summary(samples)
    for label, per in summary.items():
        count = sum(1 for s in samples if s.checkpoint_label == label)
        typer.echo(f"  {label}  ({count} images)")
        if not per:
            typer.echo("    (no rewards: render with --reward to score)")
        for name, st in per.items():
            typer.echo(f"    {name:<24} {st.mean:+.4f} +- {st.std:.4f}  [{st.min:+.4f} .. {st.max:+.4f}]  n={st.n}")


@app.command()
def export(
    set_id: SetId,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "csv",
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: rows.<format> beside the images)")] = None,
    ratings: Annotated[bool, typer.Option("--ratings", help="export the set's pair ratings instead of its images")] = False,
) -> None:
    """Write one row per image (checkpoint, prompt, seed, image path, an editing set's person_image and
    product_image, reward.<name> columns), or with
    --ratings one row per pair rating (both images and rewards, choice, rater, tags) for reward-model training."""
    from slas.platform.db import open_store
    from slas.platform.samplesets import export_set

    with open_store() as store:
        path, n = export_set(store, set_id, fmt=fmt, out=out, ratings=ratings)
    typer.echo(f"wrote {n} {'ratings' if ratings else 'rows'} to {path}")
