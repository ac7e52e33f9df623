"""Train and held-out products of the product-in-hand world, and rendered (person, product, edit) triples.

A product *design* is (kind, colour, pattern): 5 x 7 x 4 = 140 designs. Every fifth design (by a fixed
arithmetic rule, :func:`product_split`) is held out: 28 designs that the edit model never sees in
pretraining and that evaluation (pretraining's stop rule, the demo's before/after) draws from. Every kind,
colour and pattern on its own still occurs in training (for a fixed kind and colour at most one of the four
patterns is held out), so held-out products are new *combinations*, which is what a new catalogue item is.

This module only samples and renders through :mod:`slas.handworld.scene` and :mod:`slas.handworld.render`'s
public functions (the scene sampler has no notion of a split: :func:`sample_split_scene` is that adapter).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np

from slas.handworld.render import render_edit, render_person, render_product
from slas.handworld.scene import (
    KINDS,
    PATTERNS,
    PRODUCT_COLORS,
    SIZE,
    Scene,
    fits,
    product_box,
    sample_hold,
    sample_person,
    sample_product,
)

Split = Literal["train", "test"]
HELD_OUT_EVERY = 5


def product_split(kind: str, color: str, pattern: str) -> Split:
    """``"test"`` for the held-out designs, ``"train"`` for the rest (a fixed rule, no randomness)."""
    code = KINDS.index(kind) + 2 * list(PRODUCT_COLORS).index(color) + 3 * PATTERNS.index(pattern)
    return "test" if code % HELD_OUT_EVERY == 0 else "train"


def designs(split: Split) -> list[tuple[str, str, str]]:
    """Every (kind, colour, pattern) design of ``split``."""
    return [(k, c, p) for k in KINDS for c in PRODUCT_COLORS for p in PATTERNS if product_split(k, c, p) == split]


def sample_split_scene(rng: random.Random, split: Split, size: int = SIZE) -> Scene:
    """A scene (as :func:`slas.handworld.scene.sample_scene` draws it) whose product is a ``split`` design."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    while True:
        product = sample_product(rng, size)
        if product_split(product.kind, product.color, product.pattern) == split:
            break
    while True:
        person, hold = sample_person(rng, size), sample_hold(rng)
        if fits(product_box(person, product, hold), size):
            return Scene(person, product, hold)


@dataclass
class Triples:
    """Rendered scenes: person, product and target edit, each uint8 [N, H, W, 3]."""

    person: np.ndarray
    product: np.ndarray
    edit: np.ndarray
    scenes: list[Scene]

    def __len__(self) -> int:
        return len(self.scenes)


def _render_chunk(args: tuple[int, int, str, int]) -> Triples:
    seed, n, split, size = args
    rng = random.Random(seed)
    scenes = [sample_split_scene(rng, split, size) for _ in range(n)]  # type: ignore[arg-type]
    return Triples(np.stack([render_person(s.person) for s in scenes]),
                   np.stack([render_product(s.product) for s in scenes]),
                   np.stack([render_edit(s.person, s.product, s.hold) for s in scenes]), scenes)


def render_triples(n: int, seed: int, split: Split, *, size: int = SIZE, workers: int = 0) -> Triples:
    """``n`` rendered ``split`` scenes; the result depends only on (n, seed, split, size), not on ``workers``."""
    chunk = 1000
    jobs = [(seed * 1_000_003 + i, min(chunk, n - i * chunk), split, size) for i in range(math.ceil(n / chunk))]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    return Triples(np.concatenate([p.person for p in parts]), np.concatenate([p.product for p in parts]),
                   np.concatenate([p.edit for p in parts]), [s for p in parts for s in p.scenes])
