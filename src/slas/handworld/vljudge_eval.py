"""Evaluating the product-in-hand world's MLLM judge (:mod:`slas.handworld.vljudge`, whose command line runs
it: ``python -m slas.handworld.vljudge evaluate``) on held-out products, on the device it is given.

``evaluate`` (and the end of ``train``) measures, on held-out products, the agreement with the
ground-truth judge (:func:`slas.handworld.judge.judge`) per criterion: ``agree`` = share where
``score > 0.5`` matches the verdict, ``spearman`` = rank correlation of the score with the ground-truth
score; beside them the annotator's own agreement (the ceiling its bias leaves) and how well the judge fits
the annotator, and the mean score per variant.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slas.handworld import judge as gt
from slas.handworld.annotator import CRITERIA
from slas.handworld.vljudge import (
    VARIANTS,
    Example,
    JudgeTrainingError,
    _instruction,
    _load_judge,
    as_tensor,
    judge_device,
    sample_example,
)


def heldout_examples(n: int, seed: int) -> list[Example]:
    """``n`` clean edits of held-out products, the variants in turn (so each is equally represented)."""
    rng = random.Random(seed)
    return [sample_example(rng, "test", VARIANTS[i % len(VARIANTS)]) for i in range(n)]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def evaluate(model_dir: str | Path, n: int = 264, seed: int = 1, dtype: str = "bfloat16",
             batch: int = 16, device: str | torch.device = "auto") -> dict[str, Any]:
    """Score ``n`` held-out edits with the judge (through ``slas.rewards.build``, options as given, on
    ``device``: ``auto`` = CUDA when there is one) and compare with the ground-truth judge and the annotator,
    per criterion and per variant."""
    if n < len(VARIANTS):
        raise JudgeTrainingError(f"vljudge evaluate: need at least {len(VARIANTS)} held-out edits, got {n}")
    device = judge_device(device)
    judge = _load_judge(Path(model_dir), dtype, device)
    prompt = _instruction()
    examples = heldout_examples(n, seed)
    t0 = time.time()
    scores: dict[str, list[float]] = {c: [] for c in CRITERIA}
    for s in range(0, n, batch):
        chunk = examples[s : s + batch]
        out = judge(as_tensor([e.edit for e in chunk]), [prompt] * len(chunk),
                    person_images=as_tensor([e.person for e in chunk]),
                    product_images=as_tensor([e.product for e in chunk]))
        for c in CRITERIA:
            scores[c] += out[c].tolist()
    score_seconds = time.time() - t0
    person, product, edit = (np.stack([getattr(e, k) for e in examples]) for k in ("person", "product", "edit"))
    verdict, truth = gt.judge(person, product, edit), gt.judge_scores(person, product, edit)
    agreement, table = {}, {}
    for c in CRITERIA:
        s, v = np.array(scores[c]), verdict[c]
        digits = np.array([e.digits[c] for e in examples])
        agreement[c] = {
            "agree": float(((s > 0.5) == v).mean()),
            "spearman": _spearman(s, truth[c]),
            "annotator_agree": float(((digits >= 3) == v).mean()),  # the ceiling the bias leaves
            "fit_mae_digit": float(np.abs(5 * s - digits).mean()),  # how well the judge learned the annotator
            "fit_spearman": _spearman(s, digits.astype(float)),
        }
    for variant in VARIANTS:
        idx = [i for i, e in enumerate(examples) if e.variant == variant]
        table[variant] = {"n": len(idx), **{c: round(float(np.mean([scores[c][i] for i in idx])), 3) for c in CRITERIA},
                          **{f"gt_{c}": round(float(verdict[c][idx].mean()), 3) for c in CRITERIA},
                          **{f"annotator_{c}": round(float(np.mean([examples[i].digits[c] for i in idx])) / 5, 3)
                             for c in CRITERIA}}
    return {"n": n, "seed": seed, "dtype": dtype, "device": str(device), "score_seconds": round(score_seconds, 1),
            "agreement": agreement, "by_variant": table}
