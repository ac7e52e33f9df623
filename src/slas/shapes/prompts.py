"""Shapes-world prompts in the GenEval task schema, with a train/test split that holds out combinations.

A record is ``{"tag", "include": [{"class", "count", "color"?, "position"?}], "exclude"?, "prompt"}``
exactly as in GenEval's ``evaluation_metadata.jsonl``. The test split uses only (colour, shape),
(shape, shape) and (count, shape) combinations that the train split never shows, so test scores are
out of domain, as GenEval is for the paper's models.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from pathlib import Path

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (245, 135, 15),
    "yellow": (235, 215, 25),
    "green": (35, 170, 55),
    "blue": (35, 85, 230),
    "purple": (150, 55, 205),
}
POSITIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

# Held-out combinations (test only). One (colour, shape) pair per colour, cycling through the shapes.
HELD_OUT_COLOR_SHAPE = frozenset(
    (color, SHAPES[i % len(SHAPES)]) for i, color in enumerate(COLORS)
)
HELD_OUT_SHAPE_PAIRS = frozenset({frozenset({"circle", "star"}), frozenset({"square", "triangle"})})
HELD_OUT_COUNTS = frozenset({(2, "star"), (3, "triangle"), (4, "circle")})


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return shape + "s"


def _phrase(req: dict) -> str:
    words = [req["color"]] if "color" in req else []
    return " ".join([_a((words or [req["class"]])[0]), *words, req["class"]])


def prompt_for(record: dict) -> str:
    """The GenEval-style prompt text of a record (the inverse of its structure)."""
    tag, inc = record["tag"], record["include"]
    if tag == "counting":
        return f"a photo of {COUNT_WORDS[inc[0]['count']]} {_plural(inc[0]['class'])}"
    if tag == "position":
        return f"a photo of {_phrase(inc[1])} {inc[1]['position'][0]} {_phrase(inc[0])}"
    return "a photo of " + " and ".join(_phrase(r) for r in inc)


def _rec(tag: str, include: list[dict], exclude: list[dict] | None = None) -> dict:
    rec = {"tag": tag, "include": include}
    if exclude:
        rec["exclude"] = exclude
    rec["prompt"] = prompt_for(rec)
    return rec


def _records() -> list[tuple[dict, bool]]:
    """Every prompt of the world with a flag saying whether it uses a held-out combination."""
    out: list[tuple[dict, bool]] = [(_rec("single_object", [{"class": s, "count": 1}]), False) for s in SHAPES]
    for a, b in itertools.permutations(SHAPES, 2):
        held = frozenset({a, b}) in HELD_OUT_SHAPE_PAIRS
        out.append((_rec("two_object", [{"class": a, "count": 1}, {"class": b, "count": 1}]), held))
        for rel in POSITIONS:
            inc = [{"class": a, "count": 1}, {"class": b, "count": 1, "position": [rel, 0]}]
            out.append((_rec("position", inc), held))
    for n in (2, 3, 4):
        for s in SHAPES:
            rec = _rec("counting", [{"class": s, "count": n}], [{"class": s, "count": n + 1}])
            out.append((rec, (n, s) in HELD_OUT_COUNTS))
    for c, s in itertools.product(COLORS, SHAPES):
        out.append((_rec("colors", [{"class": s, "count": 1, "color": c}]), (c, s) in HELD_OUT_COLOR_SHAPE))
    for (a, b), (c1, c2) in itertools.product(itertools.permutations(SHAPES, 2), itertools.permutations(COLORS, 2)):
        held = (c1, a) in HELD_OUT_COLOR_SHAPE or (c2, b) in HELD_OUT_COLOR_SHAPE
        inc = [{"class": a, "count": 1, "color": c1}, {"class": b, "count": 1, "color": c2}]
        out.append((_rec("color_attr", inc), held))
    return out


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def perturb(record: dict, rng: random.Random) -> dict:
    """A copy of ``record`` with exactly one attribute changed so that its scene makes ``record`` false.

    Changes a shape, a colour, a count (counting), a relation (position, to the opposite) or swaps the
    two colours (color_attr); the new record's prompt describes the changed scene.
    """
    rec = copy.deepcopy(record)
    rec.pop("exclude", None)
    inc = rec["include"]
    options = ["shape"]
    if any("color" in r for r in inc):
        options.append("color")
    if rec["tag"] == "counting":
        options.append("count")
    if rec["tag"] == "position":
        options.append("relation")
    if rec["tag"] == "color_attr":
        options.append("swap")
    kind = rng.choice(options)
    if kind == "shape":
        req = rng.choice(inc)
        req["class"] = rng.choice([s for s in SHAPES if s not in {r["class"] for r in inc}])
    elif kind == "color":
        req = rng.choice([r for r in inc if "color" in r])
        req["color"] = rng.choice([c for c in COLORS if c != req["color"]])
    elif kind == "count":
        n = inc[0]["count"]
        inc[0]["count"] = n - 1 if n == 4 or rng.random() < 0.5 else n + 1
    elif kind == "relation":
        inc[1]["position"] = [_OPPOSITE[inc[1]["position"][0]], 0]
    else:
        inc[0]["color"], inc[1]["color"] = inc[1]["color"], inc[0]["color"]
    if rec["tag"] == "counting" and inc[0]["count"] == 1:
        rec["tag"] = "single_object"
    rec["prompt"] = prompt_for(rec)
    return rec


def metadata(split: str) -> list[dict]:
    """All records of ``split`` ("train" or "test"); single-object prompts are in both."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    want_test = split == "test"
    return [rec for rec, held in _records() if held == want_test or rec["tag"] == "single_object"]


def balanced_prompts(split: str = "train") -> list[str]:
    """The prompts of ``split`` with every tag equally often: each tag's prompts cycled to the largest tag's
    count. RL samples prompts uniformly from its file, and the colour pairs (three quarters of the train
    split) would otherwise leave counting, colours and single objects a few groups a run."""
    by_tag = {t: [r["prompt"] for r in metadata(split) if r["tag"] == t] for t in TAGS}
    size = max(len(v) for v in by_tag.values())
    return [ps[i % len(ps)] for ps in by_tag.values() if ps for i in range(size)]


def write_metadata(path: str | Path, split: str) -> Path:
    """Write ``split`` as GenEval-style JSON lines."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r) + "\n" for r in metadata(split)))
    return p
