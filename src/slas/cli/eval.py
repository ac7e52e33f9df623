"""``slas eval``: benchmark a checkpoint (GenEval, UniGenBench++) with its deterministic sampler and print the scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slas.cli.common import SetOpt, SlasTyper

app = SlasTyper(help="Evaluate checkpoints on benchmarks (GenEval, UniGenBench++).")


@app.command("geneval")
def geneval(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="a run dir (newest checkpoint), a checkpoint dir "
                                                "(runs/NAME/checkpoints/iter_N) or a diffusers model dir")
    ],
    output: Annotated[Path, typer.Option("--output", help="folder for results.jsonl, summary.json and images/")],
    metadata: Annotated[
        Path | None, typer.Option("--metadata", help="GenEval metadata (.jsonl); default: the shapes world's test "
                                                     "split for --detector shapes, GenEval's 553 prompts otherwise")
    ] = None,
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", help="images per prompt (fixed seeds)")] = 4,
    detector: Annotated[str, typer.Option("--detector", help="shapes (the shapes world's judge) or mask2former")] = "shapes",
    detector_model: Annotated[
        Path | None, typer.Option("--detector-model", help="mask2former: local dir of "
                                                           "facebook/mask2former-swin-small-coco-instance")
    ] = None,
    clip_model: Annotated[
        Path | None, typer.Option("--clip-model", help="mask2former: local dir of a CLIP model for colours "
                                                       "(GenEval uses ViT-L-14: openai/clip-vit-large-patch14)")
    ] = None,
    set_: SetOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per sampler call")] = 8,
    no_record: Annotated[
        bool, typer.Option("--no-record", help="do not record the evaluation in the job store (nor on the "
                                               "checkpoint's MLflow run)")
    ] = False,
) -> None:
    """Generate GenEval's prompts with the checkpoint's deterministic sampler and score them with GenEval's
    rules; print GenEval's summary (per tag and overall = the mean of the tags) and write the files."""
    from slas.eval.runner import plan_geneval, run_geneval, summary_text

    options = {"detector_model": detector_model, "clip_model": clip_model}
    plan = plan_geneval(checkpoint, metadata=metadata, images_per_prompt=images_per_prompt, detector=detector,
                        overrides=set_ or [], batch_size=batch_size, detector_options=options)
    store = None if no_record else _recording_store()
    typer.echo(f"geneval: {plan.source.label}, {len(plan.records)} prompts x {plan.images_per_prompt} images "
               f"({plan.metadata_file}), detector {plan.detector}")
    summary, results = run_geneval(plan, output)
    typer.echo(summary_text(results))
    root = output.expanduser().resolve()
    typer.echo(f"\nwrote {root / 'results.jsonl'} and {root / 'summary.json'} (images in {root / 'images'})")
    if store is not None:
        from slas.eval.record import geneval_settings

        _record(store, plan.source.checkpoint, plan.source.label, "geneval", summary, len(results),
                geneval_settings(plan), root)


@app.command("unigenbench")
def unigenbench(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="a run dir (newest checkpoint), a checkpoint dir "
                                                "(runs/NAME/checkpoints/iter_N) or a diffusers model dir")
    ],
    output: Annotated[Path, typer.Option("--output", help="folder for results.jsonl, summary.json, scores.json, "
                                                          "table.md and images/")],
    prompts: Annotated[str, typer.Option("--prompts", help="the English test set: short or long (600 prompts each)")
                       ] = "short",
    judge_model: Annotated[
        str, typer.Option("--judge-model", help="local dir (or cached hub id) of a Qwen2.5-VL judge, e.g. "
                                                "Qwen/Qwen2.5-VL-7B-Instruct or the benchmark's "
                                                "CodeGoat24/UniGenBench-EvalModel-qwen-72b-v1")
    ] = "Qwen/Qwen2.5-VL-7B-Instruct",
    judge_protocol: Annotated[
        str, typer.Option("--judge-protocol", help="testpoint (one Yes/No question per test point, read from the "
                                                   "logits) or benchmark (the benchmark's prompt and parsing)")
    ] = "testpoint",
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", help="images per prompt (image j: "
                                                                               "seed 3407 + j)")] = 4,
    limit: Annotated[int | None, typer.Option("--limit", help="only the first N prompts (a quick run)")] = None,
    set_: SetOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per sampler call and judge queries "
                                                                 "per forward pass")] = 8,
    no_record: Annotated[
        bool, typer.Option("--no-record", help="do not record the evaluation in the job store (nor on the "
                                               "checkpoint's MLflow run)")
    ] = False,
) -> None:
    """Generate UniGenBench++'s English prompts with the checkpoint's deterministic sampler, judge every image
    test point by test point with a local Qwen2.5-VL, and print the scores in the paper's Table 2 layout
    (per primary dimension, overall = their mean); write the files."""
    from slas.eval.unigenbench import heading, plan_unigenbench, run_unigenbench, table_text

    plan = plan_unigenbench(checkpoint, prompts=prompts, judge_model=judge_model, protocol=judge_protocol,
                            images_per_prompt=images_per_prompt, limit=limit, overrides=set_ or [],
                            batch_size=batch_size)
    store = None if no_record else _recording_store()
    typer.echo(f"unigenbench: {plan.source.label}, {len(plan.items)} prompts x {plan.images_per_prompt} images "
               f"({plan.prompts_file}), judge {plan.judge_model} ({plan.protocol} protocol)")
    if plan.repaired:
        typer.echo(f"note: repaired the sub_dims_en JSON of row(s) {plan.repaired} (a missing comma in a list)")
    summary, results = run_unigenbench(plan, output)
    typer.echo(table_text(summary, results, plan.source.label, heading(plan)))
    root = output.expanduser().resolve()
    typer.echo(f"\nwrote {root / 'results.jsonl'}, {root / 'summary.json'}, {root / 'scores.json'} and "
               f"{root / 'table.md'} (images in {root / 'images'})")
    if store is not None:
        from slas.eval.record import unigenbench_settings

        _record(store, plan.source.checkpoint, plan.source.label, "unigenbench", summary, len(results),
                unigenbench_settings(plan), root)


def _recording_store():  # -> slas.platform.db.Store
    """The job store an evaluation is recorded in, opened before the evaluation's heavy work so that a store
    that cannot be opened fails in one line first (``--no-record`` skips it)."""
    from slas.platform.db import open_store

    return open_store()


def _record(store, checkpoint: Path | None, label: str, benchmark: str, scores: dict[str, float], n_images: int,
            settings: dict, out: Path) -> None:
    """Record a finished evaluation (store row, metrics on the checkpoint's MLflow run) and say where; an
    evaluation that judged nothing (no ``overall``) has no score to record, and says so."""
    from slas.eval.record import record_run, recorded_line

    if scores.get("overall") is None:
        store.close()
        typer.echo("not recorded in the job store: nothing was judged, so there is no overall score")
        return
    try:
        row, owner = record_run(store, checkpoint=checkpoint, label=label, benchmark=benchmark, scores=scores,
                                n_images=n_images, settings=settings, out=out)
    finally:
        store.close()
    typer.echo(recorded_line(row, owner))


@app.command("compare")
def compare(
    evaluations: Annotated[
        list[str], typer.Argument(help="two or more eval output dirs (holding results.jsonl of slas eval geneval or "
                                       "unigenbench) or evaluation ids of the job store; the first is the baseline",
                                  metavar="A B ...")
    ],
    output: Annotated[Path | None, typer.Option("--output", help="also write the markdown table to this file")] = None,
    resamples: Annotated[int, typer.Option("--resamples", help="bootstrap resamples of the prompts")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="seed of the bootstrap draws")] = 0,
) -> None:
    """Compare evaluations of the same benchmark run (same prompts, images and seeds): a markdown table of each
    run's score per tag (GenEval) or primary dimension (UniGenBench++, same prompt set and judge protocol) and
    overall, and each run's difference to the first with a paired bootstrap 95% interval (prompts resampled
    within each tag or dimension)."""
    from slas.eval.compare import check_request, read_results, to_markdown
    from slas.eval.compare import compare as compare_runs
    from slas.eval.record import results_of

    check_request(len(evaluations), resamples)
    runs = [read_results(*results_of(spec)) for spec in evaluations]
    table = to_markdown(compare_runs(runs, resamples=resamples, seed=seed))
    typer.echo(table, nl=False)
    if output is not None:
        output.expanduser().parent.mkdir(parents=True, exist_ok=True)
        output.expanduser().write_text(table, encoding="utf-8")
        typer.echo(f"\nwrote {output}")
