"""The shapes world's ground-truth judge: GenEval-schema prompts, renderer, detector and rules."""

from __future__ import annotations

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from slas.eval.geneval import GENEVAL_TAGS, evaluate, relative_position, summarize
from slas.shapes.detect import detect
from slas.shapes.prompts import (
    COLORS,
    HELD_OUT_COLOR_SHAPE,
    HELD_OUT_COUNTS,
    HELD_OUT_SHAPE_PAIRS,
    POSITIONS,
    SHAPES,
    metadata,
    perturb,
    write_metadata,
)
from slas.shapes.render import render_record


def test_vocabulary_and_schema(tmp_path):
    assert len(SHAPES) >= 4 and len(COLORS) >= 6 and set(POSITIONS) == {"left of", "right of", "above", "below"}
    for split in ("train", "test"):
        recs = metadata(split)
        assert {r["tag"] for r in recs} == set(GENEVAL_TAGS)
        assert len({r["prompt"] for r in recs}) == len(recs)
        for r in recs:
            assert set(r) <= {"tag", "include", "exclude", "prompt"}
            for req in r["include"]:
                assert set(req) <= {"class", "count", "color", "position"} and 1 <= req["count"] <= 4
    counts = {req["count"] for r in metadata("train") + metadata("test") for req in r["include"]}
    assert counts == {1, 2, 3, 4}
    path = write_metadata(tmp_path / "test.jsonl", "test")
    assert [json.loads(x) for x in path.read_text().splitlines()] == metadata("test")


def test_test_split_holds_out_combinations():
    train = [r for r in metadata("train") if r["tag"] != "single_object"]
    test = [r for r in metadata("test") if r["tag"] != "single_object"]
    train_prompts = {r["prompt"] for r in train}
    assert not train_prompts & {r["prompt"] for r in test}
    for r in train:
        inc = r["include"]
        assert all((q.get("color"), q["class"]) not in HELD_OUT_COLOR_SHAPE for q in inc)
        if r["tag"] in ("two_object", "position"):
            assert frozenset(q["class"] for q in inc) not in HELD_OUT_SHAPE_PAIRS
        if r["tag"] == "counting":
            assert (inc[0]["count"], inc[0]["class"]) not in HELD_OUT_COUNTS


def test_judge_accepts_correct_scenes():
    rng = random.Random(123)
    recs = metadata("train") + metadata("test")
    by_tag = Counter()
    wrong = []
    for _ in range(1000):
        r = recs[rng.randrange(len(recs))]
        image, _ = render_record(r, rng)
        ok, why = evaluate(r, detect(image))
        by_tag[r["tag"]] += 1
        if not ok:
            wrong.append((r["prompt"], why))
    assert len(by_tag) == 6
    assert len(wrong) <= 10, wrong  # >= 99% correct


def test_judge_rejects_scenes_with_one_attribute_changed():
    rng = random.Random(321)
    recs = metadata("train") + metadata("test")
    fooled = []
    for _ in range(1000):
        r = recs[rng.randrange(len(recs))]
        changed = perturb(r, rng)
        assert changed["prompt"] != r["prompt"]
        image, _ = render_record(changed, rng)
        ok, _ = evaluate(r, detect(image))
        if ok:
            fooled.append((r["prompt"], changed["prompt"]))
    assert len(fooled) <= 10, fooled  # >= 99% wrong


def _obj(shape, box, color="red"):
    return SimpleNamespace(shape=shape, color=color, box=box)


def test_relative_position_rules():
    a, b = _obj("circle", (0, 10, 10, 20)), _obj("star", (20, 10, 30, 20))
    assert relative_position(a, b) == {"left of"} and relative_position(b, a) == {"right of"}
    up = _obj("square", (20, 0, 30, 8))
    assert "above" in relative_position(up, b)
    assert relative_position(_obj("x", (10, 10, 20, 20)), _obj("y", (11, 11, 21, 21))) == set()  # dead zone


def test_geneval_rules():
    rec = {"tag": "counting", "include": [{"class": "star", "count": 2}], "exclude": [{"class": "star", "count": 3}]}
    two = [_obj("star", (0, 0, 5, 5)), _obj("star", (10, 0, 15, 5))]
    assert evaluate(rec, two)[0]
    assert not evaluate(rec, [*two, _obj("star", (20, 0, 25, 5))])[0]
    assert not evaluate(rec, two[:1])[0]
    col = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "blue"}]}
    assert evaluate(col, [_obj("circle", (0, 0, 5, 5), "blue")])[0]
    assert not evaluate(col, [_obj("circle", (0, 0, 5, 5), "green")])[0]
    pos = {"tag": "position", "include": [{"class": "circle", "count": 1},
                                          {"class": "star", "count": 1, "position": ["right of", 0]}]}
    assert evaluate(pos, [_obj("circle", (0, 10, 10, 20)), _obj("star", (20, 10, 30, 20))])[0]
    assert not evaluate(pos, [_obj("circle", (20, 10, 30, 20)), _obj("star", (0, 10, 10, 20))])[0]


def test_summarize_is_mean_of_tag_accuracies():
    s = summarize(["colors", "colors", "position", "counting"], [True, False, True, False])
    assert s["colors"] == 0.5 and s["position"] == 1.0 and s["counting"] == 0.0
    assert s["overall"] == pytest.approx(0.5)
