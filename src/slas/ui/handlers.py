"""The review UI's logic as plain functions over the job store: which pair comes next, and storing a rating.

Blind pairwise review: a pair is two checkpoints' images of the same prompt and seed (and, for editing
sets, the same person and product photos). Each rater sees the pairs in an order of their own (seeded by
rater and set, so a reload continues where they were), pairs the team has rated least first, so several
people at once cover the set before any pair is rated twice; which checkpoint is on the left is also
decided per rater and pair, and the names stay hidden until the rating is stored. A rating row keeps the
sides as shown: ``sample_id`` is the left image, ``other_sample_id`` the right one, ``choice`` ``a`` (left
better), ``b``, ``tie`` or ``both_bad``, with the rater, comment and tags.

Nothing here imports Gradio: :mod:`slas.ui.app` wires these functions to components, and tests call them
directly.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from slas.errors import SlasError
from slas.platform.db import Store
from slas.platform.dberrors import StoreError
from slas.platform.samplesets import PAIR_CHOICES, checkpoint_labels, get_set
from slas.platform.schema import Rating, Sample
from slas.ui.imagefiles import checked_path, set_roots

TAGS = ("duplicate product", "extra hand", "disembodied hand", "wrong product", "identity changed",
        "over-saturated", "over-contrasted", "artifacts", "wrong count", "prompt ignored", "text garbled")
MAX_RATER = 200  # the ratings.rater column's width


class ReviewError(SlasError, ValueError):
    """A review request that cannot be served (no rater, unknown set or checkpoint, a forged pair)."""


@dataclass
class PairView:
    """One pair as the page shows it, sides already randomised; the labels are for after the rating."""

    set_id: int
    left: Sample
    right: Sample
    position: int  # how many pairs of this comparison the rater has rated
    total: int  # pairs in this comparison
    is_editing: bool = False
    hidden: dict[str, str] = field(default_factory=dict)

    @property
    def left_label(self) -> str:
        return self.left.checkpoint_label

    @property
    def right_label(self) -> str:
        return self.right.checkpoint_label


def clean_rater(name: str | None) -> str:
    """The rater name as stored (trimmed); a missing one is an error: every rating is kept with its rater."""
    rater = (name or "").strip()
    if not rater:
        raise ReviewError("enter your name as rater first: every rating is stored with its rater")
    if len(rater) > MAX_RATER:
        raise ReviewError(f"rater name is longer than {MAX_RATER} characters")
    return rater


def set_choices(store: Store) -> list[tuple[str, int]]:
    """``(label, id)`` per sample set, newest first, for a dropdown."""
    return [(f"#{s.id} {s.name} ({(s.meta or {}).get('status', '-')})", s.id) for s in store.list_sample_sets()]


def checkpoint_choices(store: Store, set_id: int) -> list[str]:
    """The set's checkpoint labels in rendering order."""
    return checkpoint_labels(store.list_samples(int(get_set(store, set_id).id)))


def _key(s: Sample) -> tuple[str, int, str | None, str | None]:
    """What two images of a pair share: prompt, seed and (editing) the input photos."""
    return (s.prompt, s.seed, s.person_image, s.product_image)


def pairs_of(samples: Sequence[Sample], a: str, b: str) -> list[tuple[Sample, Sample]]:
    """Every (image of ``a``, image of ``b``) with the same prompt, seed and inputs, in ``a``'s order."""
    if a == b:
        raise ReviewError("pick two different checkpoints to compare")
    labels = set(checkpoint_labels(samples))
    for label in (a, b):
        if label not in labels:
            raise ReviewError(f"checkpoint {label!r} is not in this set; it has {', '.join(sorted(labels))}")
    of_b = {_key(s): s for s in samples if s.checkpoint_label == b}
    return [(s, of_b[_key(s)]) for s in samples if s.checkpoint_label == a and _key(s) in of_b]


def _pair_id(x: int, y: int) -> tuple[int, int]:
    return (x, y) if x < y else (y, x)


def rating_counts(ratings: Iterable[Rating]) -> tuple[Counter[tuple[int, int]], dict[str, set[tuple[int, int]]]]:
    """How often each pair was rated, and which pairs each rater rated (pair ratings only)."""
    counts: Counter[tuple[int, int]] = Counter()
    by_rater: dict[str, set[tuple[int, int]]] = {}
    for r in ratings:
        if r.other_sample_id is None:
            continue
        pid = _pair_id(r.sample_id, r.other_sample_id)
        counts[pid] += 1
        by_rater.setdefault(r.rater, set()).add(pid)
    return counts, by_rater


def _rank(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from ``parts`` (the same on every process and run)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def next_pair(store: Store, set_id: int, a: str, b: str, rater: str | None,
              skip: Iterable[tuple[int, int]] = ()) -> PairView | None:
    """The rater's next unrated pair of checkpoints ``a`` and ``b`` in set ``set_id``, or ``None`` when they
    rated them all. Pairs the team rated least come first; ties in the rater's own random order; ``skip``
    holds pairs skipped in this session (they come back once nothing else is left)."""
    rater = clean_rater(rater)
    sset = get_set(store, set_id)
    samples = store.list_samples(sset.id)
    pairs = pairs_of(samples, a, b)
    counts, by_rater = rating_counts(store.list_ratings(sample_set_id=sset.id))
    mine = by_rater.get(rater, set())
    skipped = {_pair_id(*p) for p in skip}
    todo = [p for p in pairs if _pair_id(p[0].id, p[1].id) not in mine]
    if not todo:
        return None

    def order(p: tuple[Sample, Sample]) -> tuple[bool, int, float]:
        pid = _pair_id(p[0].id, p[1].id)
        return (pid in skipped, counts[pid], _rank(rater, sset.id, *pid))

    first, second = min(todo, key=order)
    left, right = (first, second) if _rank("side", rater, first.id, second.id) < 0.5 else (second, first)
    roots = set_roots(sset)
    for s in (left, right):  # a row pointing outside the store's folders is refused before it is shown
        for path in (s.image_path, s.person_image, s.product_image):
            if path:
                checked_path(path, roots)
    return PairView(sset.id, left, right, position=len(pairs) - len(todo), total=len(pairs),
                    is_editing=bool(left.person_image or left.product_image))


def rate(store: Store, set_id: int, left_id: int, right_id: int, *, rater: str | None, choice: str,
         comment: str | None = None, tags: Sequence[str] | None = None) -> Rating:
    """Store a rating of the pair of set ``set_id`` shown as (``left_id``, ``right_id``): ``choice`` is
    ``a`` (left better), ``b``, ``tie`` or ``both_bad``. The two ids must be a real pair of that set (same
    prompt, seed and inputs, different checkpoints): a page cannot store a comparison nobody was shown."""
    rater = clean_rater(rater)
    if choice not in PAIR_CHOICES:
        raise ReviewError(f"unknown choice {choice!r}; one of {', '.join(PAIR_CHOICES)}")
    by_id = {s.id: s for s in store.list_samples(get_set(store, set_id).id)}
    left, right = by_id.get(int(left_id)), by_id.get(int(right_id))
    if left is None or right is None:
        raise ReviewError(f"samples {left_id} and {right_id} are not both in sample set {set_id}")
    if _key(left) != _key(right) or left.checkpoint_label == right.checkpoint_label:
        raise ReviewError(f"samples {left_id} and {right_id} are not a pair (prompt, seed or checkpoints differ)")
    return store.add_rating(left.id, other_sample_id=right.id, rater=rater, choice=choice,
                            comment=(comment or "").strip() or None,
                            tags=[t.strip() for t in (tags or []) if t and t.strip()] or None)


def undo(store: Store, set_id: int, rating_id: int, *, rater: str | None) -> PairView:
    """Take back the rater's rating ``rating_id`` (a mis-keyed choice) and return its pair, sides as they
    were shown, to rate again. Only one's own ratings can be taken back."""
    rater = clean_rater(rater)
    try:
        row = store.delete_rating(int(rating_id), rater=rater)
    except StoreError as exc:
        raise ReviewError(str(exc)) from None
    by_id = {s.id: s for s in store.list_samples(get_set(store, set_id).id)}
    left, right = by_id[row.sample_id], by_id[int(row.other_sample_id or 0)]
    pairs = pairs_of(list(by_id.values()), left.checkpoint_label, right.checkpoint_label)
    _, by_rater = rating_counts(store.list_ratings(sample_set_id=set_id))
    mine = by_rater.get(rater, set())
    done = sum(1 for x, y in pairs if _pair_id(x.id, y.id) in mine)
    return PairView(set_id, left, right, position=done, total=len(pairs),
                    is_editing=bool(left.person_image or left.product_image))


def reveal(left_label: str, right_label: str, choice: str) -> str:
    """What the rater learns once the rating is stored: which checkpoint was on which side."""
    said = {"a": "left better", "b": "right better", "tie": "tie", "both_bad": "both bad"}[choice]
    return f"Stored: {said}. Left was **{left_label}**, right was **{right_label}**."


def reward_rows(view: PairView) -> list[list[object]]:
    """``[component, left, right]`` rows of the pair's reward components (blank where unscored)."""
    names = sorted(set(view.left.rewards or {}) | set(view.right.rewards or {}))

    def fmt(v: object) -> str:
        return f"{v + 0.0:+.4f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"  # no -0.0000

    return [[n, fmt((view.left.rewards or {}).get(n)), fmt((view.right.rewards or {}).get(n))] for n in names]


__all__ = [
    "TAGS", "PairView", "ReviewError", "checkpoint_choices", "clean_rater", "next_pair", "pairs_of", "rate",
    "rating_counts", "reveal", "reward_rows", "set_choices", "undo",
]
