"""The job store on SQLite and on a real PostgreSQL server: schema, migrations, writes, concurrency."""

from __future__ import annotations

import subprocess
import sys
from datetime import timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from slas.platform.db import (
    MIGRATIONS_DIR,
    VERSION_TABLE,
    JobNotFound,
    StoreError,
    alembic_config,
    default_url,
    open_store,
)
from slas.platform.schema import Base
from slas.testing.postgres import free_port


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def _schema_diff(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE})
        return [d for d in compare_metadata(ctx, Base.metadata) if not (d[0] == "remove_table" and d[1].name == VERSION_TABLE)]


def test_migrations_build_the_model_schema_and_run_both_ways(store_url):
    store = open_store(store_url)
    try:
        assert _schema_diff(store.engine) == []  # the migration scripts and the ORM models agree
        tables = set(inspect(store.engine).get_table_names())
        assert {"jobs", "attempts", "checkpoints", "sample_sets", "samples", "ratings", VERSION_TABLE} <= tables
        assert "alembic_version" not in tables  # leaves MLflow's own version table alone in a shared database
        with store.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "base")
        assert set(inspect(store.engine).get_table_names()) <= {VERSION_TABLE}
    finally:
        store.close()
    again = open_store(store_url)  # upgrades the emptied database again
    assert _schema_diff(again.engine) == []
    again.close()
    assert (MIGRATIONS_DIR / "env.py").is_file() and list((MIGRATIONS_DIR / "versions").glob("0001_*.py"))


def test_job_lifecycle_and_attempts(store):
    job = store.create_job(name="run", config={"run": {"iterations": 3}}, run_dir="/runs/run", workdir="/w")
    assert job.id and job.status == "queued" and job.created_at.tzinfo is not None
    att = store.begin_attempt(job.id, pid=1234, host="h1")
    assert att.number == 1
    got = store.get_job(job.id)
    assert (got.status, got.pid, got.host) == ("running", 1234, "h1") and got.started_at is not None
    with pytest.raises(StoreError, match=f"job {job.id} is running, not queued"):
        store.begin_attempt(job.id, pid=1)
    store.add_checkpoint(job.id, 1, "/runs/run/checkpoints/iter_000001")
    store.finish_job(job.id, "failed", error="RuntimeError: boom", exit_code=1)
    got = store.get_job(job.id)
    assert got.status == "failed" and got.error == "RuntimeError: boom" and got.finished_at >= got.started_at

    store.requeue_job(job.id, config={"run": {"iterations": 5}})
    got = store.get_job(job.id)
    assert (got.status, got.error, got.finished_at, got.config) == ("queued", None, None, {"run": {"iterations": 5}})
    att2 = store.begin_attempt(job.id, pid=99, resumed_from="/runs/run/checkpoints/iter_000001")
    store.set_mlflow_run_id(job.id, "abc123")
    store.finish_job(job.id, "completed", exit_code=0)
    attempts = store.list_attempts(job.id)
    assert [(a.number, a.status, a.exit_code) for a in attempts] == [(1, "failed", 1), (2, "completed", 0)]
    assert attempts[1].id == att2.id and attempts[1].resumed_from.endswith("iter_000001")
    assert all(a.finished_at is not None and a.finished_at.tzinfo == timezone.utc for a in attempts)
    assert store.get_job(job.id).mlflow_run_id == "abc123"


def test_job_queries_and_errors(store):
    a = store.create_job(name="a", config={}, run_dir="/r/a")
    b = store.create_job(name="b", config={}, run_dir="/r/b")
    store.finish_job(a.id, "cancelled")
    assert [j.id for j in store.list_jobs()] == [b.id, a.id]  # newest first
    assert [j.id for j in store.list_jobs(status="queued")] == [b.id]
    assert [j.id for j in store.list_jobs(limit=1)] == [b.id]
    assert [j.id for j in store.find_jobs_by_run_dir("/r/a")] == [a.id]
    with pytest.raises(JobNotFound, match="no job with id 999"):
        store.get_job(999)
    with pytest.raises(ValueError, match="no column 'nope'"):
        store.update_job(a.id, nope=1)
    with pytest.raises(ValueError, match="ends as one of"):
        store.finish_job(a.id, "running")
    with pytest.raises(IntegrityError):  # the status constraint lives in the database too
        store.update_job(a.id, status="exploded")
    assert store.get_job(a.id).status == "cancelled"  # the failed write left nothing behind


def test_lost_job_is_failed_only_while_still_active(store):
    job = store.create_job(name="a", config={}, run_dir="/r/a")
    store.begin_attempt(job.id, pid=4242, host="h")
    store.finish_job(job.id, "completed")
    assert store.fail_lost_job(job.id, pid=4242, error="gone").status == "completed"  # ended meanwhile
    store.requeue_job(job.id)
    store.begin_attempt(job.id, pid=5151, host="h")
    assert store.fail_lost_job(job.id, pid=4242, error="gone").status == "running"  # a newer process runs it
    lost = store.fail_lost_job(job.id, pid=5151, error="gone")
    assert lost.status == "failed" and store.list_attempts(job.id)[-1].status == "failed"


def test_checkpoints_samples_and_ratings(store):
    job = store.create_job(name="a", config={}, run_dir="/r/a")
    other = store.create_job(name="b", config={}, run_dir="/r/b")
    store.add_checkpoint(job.id, 1, "/r/a/checkpoints/iter_000001")
    store.add_checkpoint(job.id, 2, "/r/a/checkpoints/iter_000002")
    store.add_checkpoint(job.id, 2, "/r/a/checkpoints/iter_000002")  # rewritten (e.g. after a resume)
    assert [c.iteration for c in store.list_checkpoints(job.id)] == [1, 2]
    assert store.latest_checkpoints([job.id, other.id]) == {job.id: 2}
    assert store.sync_checkpoints(job.id, [(1, "/elsewhere"), (3, "/r/a/checkpoints/iter_000003")]) == 1
    assert [(c.iteration, c.path) for c in store.list_checkpoints(job.id)] == [
        (1, "/r/a/checkpoints/iter_000001"), (2, "/r/a/checkpoints/iter_000002"), (3, "/r/a/checkpoints/iter_000003")]

    sset = store.create_sample_set("base-vs-slas", job_id=job.id, meta={"seeds": [0, 1]})
    rows = store.add_samples(sset.id, [
        {"checkpoint_label": "base", "prompt": "a red circle", "seed": 0, "image_path": "/img/0.png",
         "rewards": {"clip": 0.25, "total": 0.25}},
        {"checkpoint_label": "iter_2", "checkpoint_path": "/r/a/checkpoints/iter_000002", "prompt": "a red circle",
         "seed": 0, "image_path": "/img/1.png", "rewards": {"clip": 0.5, "total": 0.5}},
    ])
    samples = store.list_samples(sset.id)
    assert [s.id for s in samples] == [r.id for r in rows] and samples[1].rewards == {"clip": 0.5, "total": 0.5}
    assert store.get_sample_set(sset.id).meta == {"seeds": [0, 1]}
    assert [s.id for s in store.list_sample_sets()] == [sset.id]
    store.add_rating(rows[0].id, rater="ann", score=4.0, comment="crisp")
    store.add_rating(rows[0].id, other_sample_id=rows[1].id, rater="bob", choice="b")
    ratings = store.list_ratings(sample_set_id=sset.id)
    assert [(r.rater, r.score, r.choice) for r in ratings] == [("ann", 4.0, None), ("bob", None, "b")]
    assert [r.rater for r in store.list_ratings(rater="bob")] == ["bob"]
    with pytest.raises(ValueError, match="needs a choice or a score"):
        store.add_rating(rows[0].id, rater="ann")
    with pytest.raises(StoreError, match="no sample with id 999"):
        store.add_rating(999, rater="ann", score=1.0)
    with pytest.raises(StoreError, match="no sample set"):
        store.add_samples(999, [])
    with pytest.raises(ValueError, match="no column"):
        store.add_samples(sset.id, [{"prompt": "x", "nope": 1}])


_WRITER = """
import sys
from slas.platform.db import open_store
store = open_store(sys.argv[1])
job = store.find_jobs_by_run_dir("/r/shared")[0]
for i in range(int(sys.argv[2]), int(sys.argv[2]) + 15):
    store.add_checkpoint(job.id, i, f"/r/shared/{i}")
    store.list_checkpoints(job.id)
store.close()
"""


def test_concurrent_processes_share_the_store(store_url):
    """Trainers and CLIs write at once: WAL (SQLite) or MVCC (PostgreSQL); every committed write lands."""
    with open_store(store_url) as store:
        store.create_job(name="shared", config={}, run_dir="/r/shared")
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, store_url, str(k * 100)]) for k in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    with open_store(store_url) as store:
        job = store.find_jobs_by_run_dir("/r/shared")[0]
        assert len(store.list_checkpoints(job.id)) == 45
        if store.engine.dialect.name == "sqlite":
            with store.engine.connect() as conn:
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_concurrent_first_opens_migrate_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = "import sys; from slas.platform.db import open_store; open_store(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code, url]) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    with open_store(url) as store:
        assert _schema_diff(store.engine) == []


def test_default_location_env_and_bad_urls(tmp_path, monkeypatch):
    monkeypatch.delenv("SLAS_HOME")
    monkeypatch.chdir(tmp_path)
    assert default_url() == f"sqlite:///{tmp_path / '.slas' / 'slas.db'}"
    with open_store() as store:
        store.create_job(name="x", config={}, run_dir="/r")
    assert (tmp_path / ".slas" / "slas.db").is_file()

    monkeypatch.setenv("SLAS_HOME", str(tmp_path / "home"))
    assert default_url() == f"sqlite:///{tmp_path / 'home' / 'slas.db'}"
    monkeypatch.setenv("SLAS_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    with open_store() as store:
        assert store.list_jobs() == []
    assert (tmp_path / "elsewhere.db").is_file()

    with pytest.raises(StoreError, match="bad database URL"):
        open_store("not a url")
    port = free_port()  # nothing listens there
    with pytest.raises(StoreError, match=f"cannot open the job store at postgresql\\+psycopg://u:\\*\\*\\*@127.0.0.1:{port}/x"):
        open_store(f"postgresql://u:secret@127.0.0.1:{port}/x")


def test_plain_postgresql_url_uses_psycopg3(postgres_server):
    url = postgres_server.create_database("plain_url").replace("postgresql+psycopg://", "postgresql://")
    with open_store(url) as store:
        assert store.engine.dialect.driver == "psycopg"
        assert store.create_job(name="pg", config={"a": [1, 2]}, run_dir="/r").id == 1
        assert store.get_job(1).config == {"a": [1, 2]}
