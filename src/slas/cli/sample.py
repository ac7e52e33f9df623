"""``slas sample``: render a comparison set of several checkpoints into the job store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slas.cli.common import SetOpt, SlasTyper, fail
from slas.errors import SlasError, one_line

app = SlasTyper()


@app.command()
def sample(
    checkpoints: Annotated[
        str, typer.Option("--checkpoints", help="comma-separated checkpoint dirs (runs/NAME/checkpoints/iter_N), run dirs (newest checkpoint) or `base`")
    ],
    prompts: Annotated[Path | None, typer.Option("--prompts", help="prompt file (.txt, .jsonl or .csv): a text-to-image set")] = None,
    pairs: Annotated[
        Path | None, typer.Option("--pairs", help="editing pairs (.jsonl/.csv of id, person, product, ... or a folder with "
                                                  "persons/ and products/): an editing set of person | product | edits")
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="with --pairs: the pairs of this split (train, val, test; default: all)")
    ] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="which seeds: 0,1,2 or ranges such as 0-7 (3 alone is the seed 3)")] = "0",
    config: Annotated[
        Path | None, typer.Option("--config", help="run config for every checkpoint (default: each checkpoint's own run config)")
    ] = None,
    set_: SetOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="name of the sample set (default: the checkpoint labels)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per pipeline call")] = 8,
    reward: Annotated[
        str | None, typer.Option("--reward", help="also score each image: YAML (run config or reward section) or name[:weight],...")
    ] = None,
    field: Annotated[str | None, typer.Option("--field", help="the prompt field of a .jsonl/.csv prompt file")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="image folder (default: $SLAS_HOME/samples/<set id>)")] = None,
) -> None:
    """Render a comparison set: every checkpoint x prompt x seed, paired by seed, into the job store.

    Each checkpoint samples with the pipeline's deterministic sampler from the same per-seed noise, so
    images differ only by the weights. With --pairs (instead of --prompts) an editing model edits each
    (person, product) pair; the set folder keeps the input photos under inputs/ beside the edits. Prints
    the sample set id (the review UI's input).
    """
    from slas.platform.db import open_store
    from slas.platform.sampling import plan_sample_set, render_sample_set

    plan = plan_sample_set(checkpoints, prompts, seeds, pairs=pairs, split=split, config=config, overrides=set_ or [],
                           prompt_field=field, batch_size=batch_size, reward=reward, name=name)
    with open_store() as store:
        try:
            set_id = render_sample_set(plan, store, out=out)
        except SlasError:
            raise
        except (FileNotFoundError, ValueError, RuntimeError) as exc:  # e.g. weights that do not fit the config
            fail(f"sampling failed: {one_line(exc, with_type=True)}")
        root = store.get_sample_set(set_id).meta.get("out_dir")
    items = f"{len(plan.pairs)} pairs" if plan.kind == "edit" else f"{len(plan.prompts)} prompts"
    typer.echo(f"sample set {set_id}: {plan.num_images} images ({len(plan.checkpoints)} checkpoints x "
               f"{items} x {len(plan.seeds)} seeds) in {root}")
