"""GenEval's scoring rules over detections, for any detector that yields (class, colour, box).

Rules (as GenEval defines them): every ``include`` requirement needs at least ``count`` objects of
its class (and, with ``color``, that many of that colour); an ``exclude`` requirement fails when
``count`` or more are found; ``position: [relation, i]`` needs every object of the class to stand in
that relation to every object matched by requirement i, using box centres and a dead zone of 0.1 x
the summed box sizes. A prompt is correct when all hold; the overall score is the mean of the
per-tag accuracies.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

POSITION_THRESHOLD = 0.1
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


class DetectedObject(Protocol):
    shape: str
    color: str
    box: tuple[float, float, float, float]


def relative_position(a: DetectedObject, b: DetectedObject) -> set[str]:
    """Relations of ``a`` with respect to ``b`` among left of / right of / above / below."""
    ba, bb = np.asarray(a.box, dtype=float), np.asarray(b.box, dtype=float)
    ca, cb = (ba[:2] + ba[2:]) / 2, (bb[:2] + bb[2:]) / 2
    dims = (ba[2:] - ba[:2]) + (bb[2:] - bb[:2])
    offset = ca - cb
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rel = set()
    if dx < -0.5:
        rel.add("left of")
    if dx > 0.5:
        rel.add("right of")
    if dy < -0.5:
        rel.add("above")
    if dy > 0.5:
        rel.add("below")
    return rel


def evaluate(record: dict, detections: Sequence[DetectedObject], *, top_count: bool = False) -> tuple[bool, str]:
    """(correct, reason) for one image of ``record``.

    ``top_count``: ``detections`` are in confidence order and colour and position are judged only on the
    ``count`` most confident objects of each required class, as GenEval's ``evaluate_images.py`` does for
    its COCO detector (a stray low-confidence object of the wrong colour then does not fail the image).
    Without it every detected object of the class counts (the shapes world's judge, whose detections are
    not scored).
    """
    matched: list[list[DetectedObject] | None] = []
    for req in record["include"]:
        found = [d for d in detections if d.shape == req["class"]]
        if top_count:
            found = found[: req["count"]]
        if len(found) < req["count"]:
            matched.append(None)
            return False, f"expected {req['class']} >= {req['count']}, found {len(found)}"
        if "color" in req:
            colored = [d for d in found if d.color == req["color"]]
            if len(colored) < req["count"]:
                return False, f"expected {req['color']} {req['class']} >= {req['count']}, found {len(colored)}"
            found = colored
        if "position" in req:
            relation, target = req["position"]
            group = matched[target] if target < len(matched) else None
            if not group:
                return False, f"no target for {req['class']} {relation}"
            for obj in found:
                for tgt in group:
                    rels = relative_position(obj, tgt)
                    if relation not in rels:
                        return False, f"expected {req['class']} {relation} target, found {sorted(rels) or 'overlap'}"
        matched.append(found)
    for req in record.get("exclude", []):
        n = sum(d.shape == req["class"] for d in detections)
        if n >= req["count"]:
            return False, f"expected {req['class']} < {req['count']}, found {n}"
    return True, "correct"


def summarize(tags: Iterable[str], correct: Iterable[bool]) -> dict[str, float]:
    """Per-tag accuracy and ``overall`` = mean over the tags present (GenEval's overall score)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for tag, ok in zip(tags, correct, strict=True):
        hits[tag].append(bool(ok))
    out = {tag: float(np.mean(hits[tag])) for tag in GENEVAL_TAGS if tag in hits}
    out["overall"] = float(np.mean(list(out.values()))) if out else 0.0
    return out
