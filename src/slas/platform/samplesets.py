"""Reading comparison sets back out of the store: per-checkpoint reward summaries and row/rating exports.

``slas sample`` puts each image's reward components in the job store only; ``slas samples`` and the review
UI read them through here, so nobody needs raw SQL. Exports are plain CSV or JSONL written atomically (a
temporary file renamed into place), with image paths relative to the export's folder when the images lie
under it, so a set folder with its ``rows.csv`` can be moved as a whole.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slas.errors import SlasError
from slas.files import write_atomic
from slas.platform.db import Store
from slas.platform.dberrors import StoreError
from slas.platform.schema import Rating, Sample, SampleSet

EXPORT_FORMATS = ("csv", "jsonl")
PAIR_CHOICES = ("a", "b", "tie", "both_bad")  # a: the rating's sample_id is better; b: its other_sample_id


class SampleSetError(SlasError, ValueError):
    """A sample set that does not exist or cannot be exported as asked; one line naming it."""


@dataclass(frozen=True)
class RewardStats:
    """One reward component over one checkpoint's images (NaN-free: unscored images are counted apart)."""

    n: int
    mean: float
    std: float
    min: float
    max: float


def get_set(store: Store, set_id: int) -> SampleSet:
    """The sample set ``set_id``, or a one-line :class:`SampleSetError` listing what exists."""
    try:
        return store.get_sample_set(int(set_id))
    except StoreError as exc:
        if "no sample set" not in str(exc):  # a locked or unreachable store says so itself
            raise
        known = [s.id for s in store.list_sample_sets()][:20]
        hint = f"; known ids: {', '.join(map(str, known))}" if known else "; there are none (make one with `slas sample`)"
        raise SampleSetError(f"no sample set with id {set_id}{hint}") from None


def checkpoint_labels(samples: Iterable[Sample]) -> list[str]:
    """The set's checkpoint labels in the order they were rendered (first sample id first)."""
    seen: dict[str, None] = {}
    for s in sorted(samples, key=lambda s: s.id):
        seen.setdefault(s.checkpoint_label, None)
    return list(seen)


def set_kind(sset: SampleSet, samples: Iterable[Sample]) -> str:
    """``edit`` (person + product -> edit) or ``t2i``: ``meta.kind`` as ``slas sample`` records it, else
    whether any row has input photos (sets made before the kind was recorded, or by other tools)."""
    kind = (sset.meta or {}).get("kind")
    if kind in ("edit", "t2i"):
        return kind
    return "edit" if any(s.person_image or s.product_image for s in samples) else "t2i"


def input_pairs(samples: Iterable[Sample]) -> list[tuple[str | None, str | None]]:
    """The distinct (person, product) inputs of an editing set's rows, in rendering order."""
    seen: dict[tuple[str | None, str | None], None] = {}
    for s in sorted(samples, key=lambda s: s.id):
        if s.person_image or s.product_image:
            seen.setdefault((s.person_image, s.product_image), None)
    return list(seen)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def reward_names(samples: Iterable[Sample]) -> list[str]:
    """Every reward component any sample of the set carries, sorted."""
    return sorted({k for s in samples for k in (s.rewards or {})})


def reward_summary(samples: Sequence[Sample]) -> dict[str, dict[str, RewardStats]]:
    """``{checkpoint: {component: stats}}`` over the images that have a finite score for it."""
    out: dict[str, dict[str, RewardStats]] = {}
    names = reward_names(samples)
    for label in checkpoint_labels(samples):
        per: dict[str, RewardStats] = {}
        for name in names:
            values = [v for s in samples if s.checkpoint_label == label
                      for v in [_finite((s.rewards or {}).get(name))] if v is not None]
            if not values:
                continue
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
            per[name] = RewardStats(len(values), mean, math.sqrt(var), min(values), max(values))
        out[label] = per
    return out


def _relative(path: str | None, base: Path) -> str | None:
    """``path`` relative to ``base`` when it lies under it (a portable export), else as stored."""
    if not path:
        return path
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path


def sample_rows(samples: Sequence[Sample], base: Path) -> list[dict[str, Any]]:
    """One flat row per image: ids, checkpoint, prompt, seed, image paths and one ``reward.<name>`` column each."""
    names = reward_names(samples)
    rows = []
    for s in samples:
        row: dict[str, Any] = {
            "sample_id": s.id, "checkpoint": s.checkpoint_label, "checkpoint_path": s.checkpoint_path,
            "prompt": s.prompt, "seed": s.seed, "image": _relative(s.image_path, base),
            "person_image": _relative(s.person_image, base), "product_image": _relative(s.product_image, base),
        }
        row.update({f"reward.{n}": _finite((s.rewards or {}).get(n)) for n in names})
        rows.append(row)
    return rows


def rating_rows(ratings: Sequence[Rating], samples: Mapping[int, Sample], base: Path) -> list[dict[str, Any]]:
    """One row per pair rating, as reward-model training reads it: both images, their checkpoints and
    rewards, the choice (``a``: image_a is better), the rater, tags and comment. Single-image scores are
    left out (they are not pairs)."""
    rows = []
    for r in ratings:
        if r.other_sample_id is None or r.choice is None:
            continue
        a, b = samples.get(r.sample_id), samples.get(r.other_sample_id)
        if a is None or b is None:
            continue
        rows.append({
            "rating_id": r.id, "rater": r.rater, "choice": r.choice, "tags": list(r.tags or []),
            "comment": r.comment or "", "created_at": r.created_at.isoformat() if r.created_at else None,
            "prompt": a.prompt, "seed": a.seed,
            "sample_a": a.id, "checkpoint_a": a.checkpoint_label, "image_a": _relative(a.image_path, base),
            "sample_b": b.id, "checkpoint_b": b.checkpoint_label, "image_b": _relative(b.image_path, base),
            "person_image": _relative(a.person_image, base), "product_image": _relative(a.product_image, base),
            "rewards_a": {k: _finite(v) for k, v in (a.rewards or {}).items()},
            "rewards_b": {k: _finite(v) for k, v in (b.rewards or {}).items()},
        })
    return rows


def format_rows(rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """``rows`` as CSV (nested values as JSON text, lists joined by ``;``) or JSONL."""
    if fmt not in EXPORT_FORMATS:
        raise SampleSetError(f"unknown export format {fmt!r}; one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "jsonl":
        return "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    fields: dict[str, None] = {}
    for r in rows:
        fields.update(dict.fromkeys(r))
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ";".join(map(str, v)) if isinstance(v, list) else json.dumps(v) if isinstance(v, dict)
                         else ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def set_folder(sset: SampleSet, samples: Sequence[Sample]) -> Path | None:
    """The set's image folder: ``meta.out_dir`` as ``slas sample`` records it, else the images' common folder."""
    out = (sset.meta or {}).get("out_dir")
    if out:
        return Path(out)
    if not samples:
        return None
    return Path(os.path.commonpath([str(Path(s.image_path).parent) for s in samples]))


def export_set(store: Store, set_id: int, *, fmt: str = "csv", out: str | Path | None = None,
               ratings: bool = False) -> tuple[Path, int]:
    """Write the set's sample rows (or, with ``ratings``, its pair ratings) to ``out`` (default: beside the
    images, ``rows.<fmt>`` / ``ratings.<fmt>``); returns the file and how many rows it holds."""
    if fmt not in EXPORT_FORMATS:
        raise SampleSetError(f"unknown export format {fmt!r}; one of {', '.join(EXPORT_FORMATS)}")
    sset = get_set(store, set_id)
    samples = store.list_samples(sset.id)
    if out is None:
        folder = set_folder(sset, samples)
        if folder is None:
            raise SampleSetError(f"sample set {sset.id} has no images and no folder; pass --out FILE")
        path = folder / f"{'ratings' if ratings else 'rows'}.{fmt}"
    else:
        path = Path(out)
        if path.is_dir():
            raise SampleSetError(f"--out {out} is a folder; give a file name such as {Path(out) / ('rows.' + fmt)}")
    base = path.parent
    if ratings:
        rows = rating_rows(store.list_ratings(sample_set_id=sset.id), {s.id: s for s in samples}, base)
    else:
        rows = sample_rows(samples, base)
    return write_atomic(path, format_rows(rows, fmt)), len(rows)


__all__ = [
    "EXPORT_FORMATS", "PAIR_CHOICES", "RewardStats", "SampleSetError", "checkpoint_labels", "export_set",
    "format_rows", "get_set", "input_pairs", "rating_rows", "reward_names", "reward_summary", "sample_rows",
    "set_folder", "set_kind",
]
