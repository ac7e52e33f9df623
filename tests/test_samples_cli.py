"""`slas samples list|show|export`: comparison sets read back from the store without raw SQL."""

from __future__ import annotations

import csv
import json

import pytest

from slas.platform.db import open_store
from slas.platform.samplesets import SampleSetError, export_set, reward_summary
from slas.testing.cli import error_text, run_cli
from slas.testing.review import make_review_set


@pytest.fixture
def review_set(tmp_path):
    with open_store() as store:  # the per-test store of conftest's SLAS_HOME
        set_id = make_review_set(store, tmp_path / "set", seeds=(0, 1, 2))
    return set_id, tmp_path / "set"


def test_list_and_show_give_per_checkpoint_reward_summaries(review_set):
    set_id, root = review_set
    r = run_cli("samples", "list")
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if x.strip().startswith(str(set_id)))
    assert line.split()[:5] == [str(set_id), "complete", "12", "2", "0"]
    r = run_cli("samples", "show", set_id)
    assert r.exit_code == 0, r.output
    assert f"folder:  {root.resolve()}" in r.stdout
    # run/iter_2 (checkpoint 1): clip = 0.1 + 0.01 * seed over seeds 0,1,2 and two prompts -> mean 0.11
    block = r.stdout.split("run/iter_2")[1]
    clip = next(x for x in block.splitlines() if x.strip().startswith("clip"))
    assert "+0.1100 +- 0.0089" in clip and "[+0.1000 .. +0.1200]" in clip and "n=6" in clip


def test_reward_summary_skips_unscored_images(tmp_path):
    with open_store() as store:
        sset = store.create_sample_set("s")
        store.add_samples(sset.id, [
            {"checkpoint_label": "a", "prompt": "p", "seed": 0, "image_path": "/x/0.png", "rewards": {"r": 1.0}},
            {"checkpoint_label": "a", "prompt": "p", "seed": 1, "image_path": "/x/1.png", "rewards": {"r": None}},
            {"checkpoint_label": "b", "prompt": "p", "seed": 0, "image_path": "/x/2.png", "rewards": {}},
        ])
        summary = reward_summary(store.list_samples(sset.id))
    assert summary["a"]["r"].n == 1 and summary["a"]["r"].mean == 1.0 and summary["b"] == {}


def test_export_writes_rows_beside_the_images(review_set):
    set_id, root = review_set
    r = run_cli("samples", "export", set_id)
    assert r.exit_code == 0, r.output
    assert f"wrote 12 rows to {root.resolve() / 'rows.csv'}" in r.stdout
    rows = list(csv.DictReader((root / "rows.csv").open()))
    assert len(rows) == 12 and (root / rows[0]["image"]).is_file()  # relative to the file: the folder can move
    first = rows[0]
    assert first["checkpoint"] == "base" and first["prompt"] == "a red circle" and float(first["reward.clip"]) == 0.0
    out = root.parent / "elsewhere" / "rows.jsonl"
    r = run_cli("samples", "export", set_id, "--format", "jsonl", "--out", out)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 12 and lines[-1]["reward.aesthetic"] == pytest.approx(-0.1)
    assert lines[0]["image"] == str((root / "00" / "p0000_seed0.png").resolve())  # not under the file's folder


def test_export_ratings_for_reward_model_training(review_set, tmp_path):
    set_id, _ = review_set
    with open_store() as store:
        a, b = [s for s in store.list_samples(set_id) if s.prompt == "a red circle" and s.seed == 0]
        store.add_rating(a.id, other_sample_id=b.id, rater="ann", choice="b", comment="sharper",
                         tags=["extra hand", "over-saturated"])
        store.add_rating(a.id, rater="ann", score=3.0)  # a single-image score: not a pair, not exported
        path, n = export_set(store, set_id, fmt="jsonl", out=tmp_path / "r.jsonl", ratings=True)
    assert n == 1
    row = json.loads(path.read_text())
    assert row["choice"] == "b" and row["rater"] == "ann" and row["tags"] == ["extra hand", "over-saturated"]
    assert row["checkpoint_a"] == "base" and row["checkpoint_b"] == "run/iter_2"
    assert row["rewards_b"]["clip"] == pytest.approx(0.1)
    r = run_cli("samples", "export", set_id, "--ratings", "--out", tmp_path / "r.csv")
    assert r.exit_code == 0, r.output
    (got,) = csv.DictReader((tmp_path / "r.csv").open())
    assert got["tags"] == "extra hand;over-saturated" and json.loads(got["rewards_a"])["clip"] == 0.0


def test_bad_input_is_one_line(review_set, tmp_path):
    set_id, _ = review_set
    r = run_cli("samples", "show", 999)
    assert r.exit_code == 2 and error_text(r) == f"error: no sample set with id 999; known ids: {set_id}"
    r = run_cli("samples", "export", set_id, "--format", "xlsx")
    assert r.exit_code == 2 and error_text(r) == "error: unknown export format 'xlsx'; one of csv, jsonl"
    r = run_cli("samples", "export", set_id, "--out", tmp_path)
    assert r.exit_code == 2 and "is a folder" in error_text(r)
    with open_store() as store, pytest.raises(SampleSetError, match="has no images and no folder"):
        export_set(store, store.create_sample_set("empty").id)
