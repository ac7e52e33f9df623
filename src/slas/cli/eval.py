"""``slas eval``: benchmark a checkpoint (GenEval) with its deterministic sampler and print the scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slas.cli.common import SetOpt, SlasTyper

app = SlasTyper(help="Evaluate checkpoints on benchmarks (GenEval).")


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
) -> None:
    """Generate GenEval's prompts with the checkpoint's deterministic sampler and score them with GenEval's
    rules; print GenEval's summary (per tag and overall = the mean of the tags) and write the files."""
    from slas.eval.runner import plan_geneval, run_geneval, summary_text

    options = {"detector_model": detector_model, "clip_model": clip_model}
    plan = plan_geneval(checkpoint, metadata=metadata, images_per_prompt=images_per_prompt, detector=detector,
                        overrides=set_ or [], batch_size=batch_size, detector_options=options)
    typer.echo(f"geneval: {plan.source.label}, {len(plan.records)} prompts x {plan.images_per_prompt} images "
               f"({plan.metadata_file}), detector {plan.detector}")
    _, results = run_geneval(plan, output)
    typer.echo(summary_text(results))
    root = output.expanduser().resolve()
    typer.echo(f"\nwrote {root / 'results.jsonl'} and {root / 'summary.json'} (images in {root / 'images'})")
