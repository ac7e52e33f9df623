"""The job store's evaluations table on SQLite and PostgreSQL: rows, filters, replacement and one-line errors."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect

from slas.platform.db import VERSION_TABLE, alembic_config, open_store
from slas.platform.dberrors import EvalNotFound, JobNotFound
from slas.platform.durable import DurableRecorder


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


SETTINGS = {"detector": "shapes", "images_per_prompt": 2, "metadata": "shapes world test split", "seed": 0}


def test_evals_are_rows_with_scores_settings_and_results(store, tmp_path):
    job = store.create_job(name="a", config={}, run_dir="/r/a")
    row = store.add_eval(checkpoint="/r/a/checkpoints/iter_000002", iteration=2, job_id=job.id, benchmark="geneval",
                         settings={**SETTINGS, "metadata": tmp_path / "meta.jsonl"},
                         scores={"overall": 0.5, "counting": 0.25, "colors": 0.75}, n_images=8,
                         results_path="/out/results.jsonl", images_dir="/out/images")
    got = store.get_eval(row.id)
    assert (got.job_id, got.iteration, got.benchmark, got.n_images) == (job.id, 2, "geneval", 8)
    assert got.scores == {"overall": 0.5, "counting": 0.25, "colors": 0.75} and got.overall == 0.5
    assert got.settings["metadata"] == str(tmp_path / "meta.jsonl")  # a path is kept as text
    assert got.results_path == "/out/results.jsonl" and got.created_at.tzinfo is not None

    cli = store.add_eval(checkpoint="/models/base", benchmark="unigenbench", scores={"overall": 0.1}, n_images=3)
    assert cli.job_id is None and cli.iteration is None
    assert [e.id for e in store.list_evals()] == [cli.id, row.id]  # newest first
    assert [e.id for e in store.list_evals(job_id=job.id)] == [row.id]
    assert [e.id for e in store.list_evals(benchmark="unigenbench")] == [cli.id]
    assert [e.id for e in store.list_evals(checkpoint="/r/a/checkpoints/iter_000002")] == [row.id]
    assert [e.id for e in store.list_evals(limit=1)] == [cli.id]


def test_replace_keeps_one_row_per_job_iteration_benchmark_and_settings(store):
    job = store.create_job(name="a", config={}, run_dir="/r/a")
    kw = {"checkpoint": "/r/a/checkpoints/iter_000004", "iteration": 4, "job_id": job.id, "benchmark": "geneval",
          "n_images": 4}
    first = store.add_eval(**kw, settings=SETTINGS, scores={"overall": 0.2}, replace=True)
    again = store.add_eval(**kw, settings=SETTINGS, scores={"overall": 0.6}, replace=True)  # re-evaluated after a resume
    other = store.add_eval(**kw, settings={**SETTINGS, "seed": 1}, scores={"overall": 0.3}, replace=True)
    assert again.id == first.id and other.id != first.id
    assert sorted((e.id, e.overall) for e in store.list_evals(job_id=job.id)) == [(first.id, 0.6), (other.id, 0.3)]
    plain = store.add_eval(**kw, settings=SETTINGS, scores={"overall": 0.6})  # without replace: a new row
    assert plain.id not in (first.id, other.id)


def test_bad_evals_are_refused_in_one_line_and_write_nothing(store):
    with pytest.raises(ValueError, match="need an 'overall' entry"):
        store.add_eval(checkpoint="c", benchmark="geneval", scores={"colors": 1.0}, n_images=1)
    with pytest.raises(ValueError, match="'colors' is not finite"):
        store.add_eval(checkpoint="c", benchmark="geneval", scores={"overall": 0.5, "colors": float("nan")}, n_images=1)
    with pytest.raises(JobNotFound, match="no job with id 99"):
        store.add_eval(checkpoint="c", benchmark="geneval", scores={"overall": 0.5}, n_images=1, job_id=99)
    with pytest.raises(EvalNotFound, match="no evaluation with id 7"):
        store.get_eval(7)
    assert store.list_evals() == []


def test_a_deleted_job_leaves_its_evals_and_checkpoints_name_their_job(store):
    job = store.create_job(name="a", config={}, run_dir="/r/a")
    store.add_checkpoint(job.id, 2, "/r/a/checkpoints/iter_000002")
    assert store.job_of_checkpoint("/r/a/checkpoints/iter_000002") == job.id
    assert store.job_of_checkpoint("/elsewhere/iter_000002") is None
    row = store.add_eval(checkpoint="/r/a/checkpoints/iter_000002", benchmark="geneval", scores={"overall": 1.0},
                         n_images=1, job_id=job.id)
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM jobs WHERE id = {job.id}")
    assert store.get_eval(row.id).job_id is None  # the evaluation outlives its job (ON DELETE SET NULL)


def test_a_running_job_records_evals_durably(store, tmp_path):
    job = store.create_job(name="a", config={}, run_dir=tmp_path)
    recorder = DurableRecorder(store, tmp_path)
    kw = {"checkpoint": str(tmp_path / "iter_000001"), "iteration": 1, "job_id": job.id, "benchmark": "geneval",
          "settings": SETTINGS, "scores": {"overall": 0.5}, "n_images": 2, "replace": True}
    assert recorder.record("an evaluation", "add_eval", **kw)
    assert recorder.record("an evaluation", "add_eval", **kw)  # replayed twice: still one row
    assert [e.overall for e in store.list_evals(job_id=job.id)] == [0.5]


def test_the_evals_migration_runs_both_ways(store_url):
    with open_store(store_url) as store:
        assert "evals" in inspect(store.engine).get_table_names()
        with store.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0001_initial")
        tables = set(inspect(store.engine).get_table_names())
        assert "evals" not in tables and {"jobs", VERSION_TABLE} <= tables
    with open_store(store_url) as again:  # an old store upgrades in place
        assert "evals" in inspect(again.engine).get_table_names()
