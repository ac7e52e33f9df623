"""Held-out evaluation in the shapes world: sample with the pipeline, judge with the detector + GenEval rules.

Evaluation uses the pipeline's own deterministic flow sampler (Euler ODE) with fixed per-image seeds,
so "before" and "after" scores of two methods see the same initial noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from slas.eval.geneval import evaluate, summarize
from slas.shapes.detect import detect
from slas.shapes.models import IMAGE_SIZE, TEXT_MAX_LENGTH


def judge(images: Tensor | Sequence, records: Sequence[dict]) -> list[bool]:
    """Ground truth: is each image correct for its record? (images: [N, 3, H, W] in [0, 1] or PIL)."""
    return [evaluate(rec, detect(img))[0] for img, rec in zip(images, records, strict=True)]


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], *, num_steps: int, batch_size: int = 128) -> Tensor:
    """Images [N, 3, H, W] in [0, 1] (float32, CPU), one per (prompt, seed), in batches."""
    out = []
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i : i + batch_size]]
        images = pipe(
            prompt=list(prompts[i : i + batch_size]), height=IMAGE_SIZE, width=IMAGE_SIZE,
            num_inference_steps=num_steps, generator=gens, output_type="pt", max_sequence_length=TEXT_MAX_LENGTH,
        ).images
        out.append(images.float().cpu())
    return torch.cat(out)


def expand(records: Sequence[dict], images_per_prompt: int, seed: int = 0) -> tuple[list[dict], list[int]]:
    """Each record ``images_per_prompt`` times, with a distinct fixed seed per image."""
    recs = [r for r in records for _ in range(images_per_prompt)]
    return recs, [seed * 1_000_003 + i for i in range(len(recs))]


def evaluate_with(
    generate_fn: Callable[[list[str], list[int]], Tensor], records: Sequence[dict], *, images_per_prompt: int = 4,
    seed: int = 0,
) -> tuple[dict[str, float], Tensor, list[bool]]:
    """GenEval-style scores (per tag + ``overall``), the images and the per-image verdicts, for any
    deterministic ``generate_fn(prompts, seeds)`` (a policy's ``generate``, or :func:`generate` on a pipeline)."""
    recs, seeds = expand(records, images_per_prompt, seed)
    images = generate_fn([r["prompt"] for r in recs], seeds)
    verdicts = judge(images, recs)
    return summarize([r["tag"] for r in recs], verdicts), images, verdicts


def evaluate_pipeline(
    pipe, records: Sequence[dict], *, images_per_prompt: int = 4, num_steps: int = 10, seed: int = 0,
    batch_size: int = 128,
) -> tuple[dict[str, float], Tensor, list[bool]]:
    """:func:`evaluate_with` on a bare pipeline (pretraining has no policy around it)."""
    was_disabled = getattr(pipe, "_progress_bar_config", {}).get("disable", False)
    pipe.set_progress_bar_config(disable=True)
    try:
        return evaluate_with(lambda p, s: generate(pipe, p, s, num_steps=num_steps, batch_size=batch_size), records,
                             images_per_prompt=images_per_prompt, seed=seed)
    finally:
        pipe.set_progress_bar_config(disable=was_disabled)
