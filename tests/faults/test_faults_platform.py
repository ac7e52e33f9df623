"""Platform faults injected by the tests themselves: a job store another process holds locked, a store
file of garbage, a metrics file cut mid-line, a password planted in the store and tracking URLs.

What the tool does about them: waits a bounded time and then says so in one line, queues a running job's
store writes on disk until they land, names the damaged file and what to do, and never writes a password
in clear -- not in a message, a log, a state file, an MLflow param or ``slas jobs`` output.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from slas.credentials import redact_text, redact_url
from slas.platform.db import StoreError, open_store
from slas.platform.dberrors import StoreLocked
from slas.platform.durable import PENDING_NAME, DurableRecorder
from slas.platform.jobs import JobManager
from slas.platform.tracking import MLflowTracker, TrackingServerUnavailable, make_tracker, read_metrics
from slas.platform.tracking.jsonl import JsonlTracker, MetricsFileDamaged
from slas.testing.cli import error_text as err
from slas.testing.cli import run_cli as slas
from slas.testing.postgres import free_port

PASSWORD = "PASSWORD123"







def one_error_line(result) -> str:
    """The command failed with exit 2 and exactly one ``error:`` line and no traceback; that line."""
    text = err(result)
    assert result.exit_code == 2, (result.exit_code, text, result.output)
    assert len(text.splitlines()) == 1 and text.startswith("error: "), text
    assert "Traceback" not in result.output and "[SQL" not in text and "INSERT" not in text, text
    return text


def store_db() -> Path:
    return Path(os.environ["SLAS_HOME"]) / "slas.db"


# ---------------------------------------------------------------------------------------------- a held lock

# Contention tests are SQLite-only: SQLite has one database-wide write lock that another process can hold
# (a CLI, a trainer, someone's `sqlite3` shell); PostgreSQL's writers wait on row locks instead.
_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[3] == "readers-too":  # an exclusive lock that even readers of a WAL database wait for
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE slas_alembic_version SET version_num = version_num")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


@contextlib.contextmanager
def held_by_another_process(db: Path, *, seconds: float = 120, mode: str = "writers") -> Iterator[None]:
    """Another process holds ``db``'s write lock (``mode="readers-too"``: its every lock) inside the block."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db), str(seconds), mode], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_jobs_on_a_locked_store_wait_a_bounded_time_then_say_so_in_one_line(workdir, monkeypatch):
    open_store().close()  # the store exists (and is in WAL mode) before the other process locks it
    db = store_db()
    monkeypatch.setenv("SLAS_STORE_LOCK_TIMEOUT", "2")
    with held_by_another_process(db):
        t0 = time.monotonic()
        line = one_error_line(slas("jobs", "submit", "tiny.yaml"))
        waited = time.monotonic() - t0
        assert line.startswith(f"error: job store {db} is locked by another process; retried for "), line
        assert "SLAS_STORE_LOCK_TIMEOUT" in line and "tiny" not in line.replace("tiny.yaml", "")  # no config dump
        assert 1.5 <= waited < 60, waited
        r = slas("jobs", "list")  # a writer does not block readers (WAL)
        assert r.exit_code == 0 and "no jobs yet" in r.stdout, err(r)
    with open_store() as store:
        assert store.list_jobs() == []  # the refused submit left no row and launched nothing
        job = store.create_job(name="queued", config={}, run_dir=str(workdir / "runs" / "queued"))

    monkeypatch.setenv("SLAS_STORE_LOCK_TIMEOUT", "0.5")
    with held_by_another_process(db, mode="readers-too"):
        for args in (("list",), ("list", "--json"), ("show", job.id), ("logs", job.id), ("cancel", job.id),
                     ("resume", job.id), ("submit", "tiny.yaml")):
            line = one_error_line(slas("jobs", *args))
            assert f"job store {db} is locked by another process" in line, (args, line)
    assert open_store().get_job(job.id).status == "queued"


def test_a_lock_shorter_than_the_budget_is_waited_out(tmp_path):
    url = f"sqlite:///{tmp_path / 'slas.db'}"
    with open_store(url, lock_timeout=30) as store:
        job = store.create_job(name="a", config={}, run_dir="/r/a")
        holder = sqlite3.connect(tmp_path / "slas.db", isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(1.5, lambda: holder.execute("ROLLBACK"))
        release.start()
        t0 = time.monotonic()
        store.add_checkpoint(job.id, 1, "/r/a/checkpoints/iter_000001")
        assert time.monotonic() - t0 >= 1.0  # it waited for the lock instead of failing
        release.join()
        holder.close()
        assert [c.iteration for c in store.list_checkpoints(job.id)] == [1]


def test_no_checkpoint_row_is_lost_to_a_lock_held_longer_than_the_retry_budget(tmp_path):
    db = tmp_path / "slas.db"
    store = open_store(f"sqlite:///{db}", lock_timeout=0.5)
    job = store.create_job(name="a", config={}, run_dir=str(tmp_path / "run"))
    store.begin_attempt(job.id, pid=os.getpid())
    run_dir = tmp_path / "run"
    recorder = DurableRecorder(store, run_dir)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.warns(RuntimeWarning, match="locked by another process.*wait in") as caught:
        t0 = time.monotonic()
        landed = [recorder.record("a checkpoint", "add_checkpoint", job.id, it, run_dir / f"iter_{it:06d}")
                  for it in range(1, 9)]
        elapsed = time.monotonic() - t0
    assert landed == [False] * 8 and recorder.pending == 8
    assert len([w for w in caught if "locked" in str(w.message)]) == 1  # one warning, not one per write
    assert elapsed < 20, f"8 queued writes took {elapsed:.1f} s"  # a short try each, not the budget each
    with pytest.raises(StoreLocked, match="locked by another process"):
        store.add_checkpoint(job.id, 99, "/elsewhere")  # a direct write still fails in one line
    assert store.list_checkpoints(job.id) == []
    holder.execute("ROLLBACK")
    holder.close()
    assert recorder.close() == 0 and not (run_dir / PENDING_NAME).exists()
    rows = store.list_checkpoints(job.id)
    assert [(c.iteration, Path(c.path).name) for c in rows] == [(it, f"iter_{it:06d}") for it in range(1, 9)]
    store.close()


def test_writes_queued_by_a_dead_process_are_replayed_by_the_next_one(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'slas.db'}", lock_timeout=0.5) as store:
        job = store.create_job(name="a", config={}, run_dir=str(tmp_path))
        store.begin_attempt(job.id, pid=os.getpid())  # a new attempt runs now
        dead = 2**22 + 17  # the process that queued these writes and died
        queued = [
            {"what": "a checkpoint", "method": "add_checkpoint", "args": [job.id, 3, "/r/iter_000003"], "kwargs": {},
             "pid": dead},
            {"what": "the end state", "method": "finish_job", "args": [job.id, "failed"], "kwargs": {"error": "x"},
             "pid": dead},
        ]
        pending = tmp_path / PENDING_NAME
        pending.write_text("".join(json.dumps(e) + "\n" for e in queued) + '{"what": "a check')  # torn by the kill
        recorder = DurableRecorder(store, tmp_path)
        with pytest.warns(RuntimeWarning) as caught:
            assert recorder.record("a checkpoint", "add_checkpoint", job.id, 4, "/r/iter_000004")
        said = " ".join(str(w.message) for w in caught)
        assert "cut short" in said and f"dropped the queued end state of process {dead}" in said
        assert [c.iteration for c in store.list_checkpoints(job.id)] == [3, 4]
        assert store.get_job(job.id).status == "running"  # the old process's end did not end this attempt
        assert not pending.exists()


# ---------------------------------------------------------------------------------------------- damage


def test_a_corrupt_store_file_is_named_in_one_line_with_what_to_do(workdir):
    db = store_db()
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not a database\x00\xff" * 300)
    with pytest.raises(StoreError) as info:
        open_store()
    text = str(info.value)
    assert text == f"job store {db} is damaged (file is not a database): move that file aside and run again " \
                   "to start an empty store, or restore it from a backup"
    for args in (("list",), ("list", "--json"), ("show", "1"), ("logs", "1"), ("cancel", "1"), ("resume", "1"),
                 ("submit", "tiny.yaml")):
        assert one_error_line(slas("jobs", *args)) == f"error: {text}", args
    assert db.read_bytes().startswith(b"this is not a database")  # nothing overwrote the user's file


def test_a_store_truncated_mid_file_is_named_in_one_line(tmp_path):
    db = tmp_path / "slas.db"
    with open_store(f"sqlite:///{db}") as store:
        for i in range(300):
            store.create_job(name=f"job{i}", config={"pad": "x" * 400}, run_dir=f"/r/{i}")
    with db.open("r+b") as fh:
        fh.truncate(db.stat().st_size // 3)
    with pytest.raises(StoreError) as info, open_store(f"sqlite:///{db}") as store:
        store.list_jobs()
    text = str(info.value)
    assert text.startswith(f"job store {db} is damaged (") and "move that file aside" in text
    assert "\n" not in text and "SELECT" not in text


def test_store_errors_never_carry_the_sql_or_its_parameters(store_url):
    with open_store(store_url) as store:
        job = store.create_job(name="a", config={"secret_value": "s3cr3t"}, run_dir="/r/a")
        with pytest.raises(IntegrityError) as info:  # still the SQLAlchemy class callers catch
            store.update_job(job.id, status="exploded")
    text = str(info.value)
    assert isinstance(info.value, StoreError) and "\n" not in text
    assert "UPDATE" not in text and "[SQL" not in text and "exploded" not in text and "parameters" not in text
    assert "ck_jobs_status" in text  # what the database said is kept


# ---------------------------------------------------------------------------------------------- metrics.jsonl


def test_a_torn_last_metrics_line_is_skipped_then_repaired_and_a_torn_middle_one_is_named(tmp_path):
    run_dir = tmp_path / "run"
    tracker = make_tracker(run_dir, params={"lr": 1e-3}, run_name="t", mlflow=False)
    for step in (1, 2, 3):
        tracker.log_metrics({"loss": 0.5 / step}, step=step)
    tracker.close()
    metrics = run_dir / "metrics.jsonl"
    os.truncate(metrics, metrics.stat().st_size - 9)  # the process died while writing step 3's line

    with pytest.warns(RuntimeWarning, match=f"{metrics} line 3 was cut short"):
        assert [r["step"] for r in read_metrics(metrics)] == [1, 2]
    with pytest.warns(RuntimeWarning, match=f"{metrics} line 3 was cut short by a crash mid-write: removed it"):
        resumed = JsonlTracker(run_dir)  # what a resumed run opens
    resumed.log_metrics({"loss": 0.1}, step=3)  # the resumed trainer repeats the iteration
    resumed.log_metrics({"loss": 0.05}, step=4)
    resumed.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3, 4]

    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], lines[1][:20], *lines[2:]]) + "\n")  # damage mid-file
    with pytest.raises(MetricsFileDamaged) as info:
        read_metrics(metrics)
    assert str(info.value).startswith(f"{metrics} line 2 is not a metrics record") and "\n" not in str(info.value)
    with pytest.raises(MetricsFileDamaged, match="line 2"):
        JsonlTracker(run_dir)


# ---------------------------------------------------------------------------------------------- credentials


def test_redaction_masks_every_form_of_a_password():
    assert redact_url(f"http://user:{PASSWORD}@127.0.0.1:5000/x") == "http://user:***@127.0.0.1:5000/x"
    assert redact_url(f"postgresql+psycopg://u:{PASSWORD}@db:5432/slas") == "postgresql+psycopg://u:***@db:5432/slas"
    assert redact_url(f"postgresql://u:{PASSWORD}@db:notaport/slas") == "postgresql://u:***@db:notaport/slas"
    assert redact_url(f"u:{PASSWORD}@db/slas") == "u:***@db/slas"
    assert redact_url("sqlite:////tmp/slas.db") == "sqlite:////tmp/slas.db"
    assert redact_url("http://user@host/x") == "http://user@host/x"
    text = (f"API request to http://user:{PASSWORD}@127.0.0.1:9/api failed; dsn host=h password={PASSWORD} "
            f"and 'https://a:p@ss{PASSWORD}@h/x'")
    assert PASSWORD not in redact_text(text) and "http://user:***@127.0.0.1:9/api" in redact_text(text)


def test_the_tracking_state_keeps_the_uri_masked_and_still_finds_its_run(tmp_path):
    uri = f"http://user:{PASSWORD}@127.0.0.1:{free_port()}"  # nothing listens: the offline buffer path
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    state = {"tracking_uri": redact_url(uri), "experiment": "slas", "run_id": "abc123", "last_step": {"loss": 4},
             "last_image_step": {}}
    (run_dir / MLflowTracker.STATE_NAME).write_text(json.dumps(state))
    with pytest.warns(TrackingServerUnavailable) as caught:
        tracker = MLflowTracker(run_dir, tracking_uri=uri, retry_interval=0)
    assert tracker.run_id == "abc123"  # the masked form matched the real URI: the same store, the same run
    tracker.log_params({"reward": {"endpoint": f"https://bob:{PASSWORD}@judge:8000/v1"}, "lr": 0.1})
    tracker.log_metrics({"loss": 1.0}, 5)
    with pytest.warns(TrackingServerUnavailable) as closing:
        tracker.close()
    said = [str(w.message) for w in [*caught, *closing]]
    assert said and all(PASSWORD not in m for m in said) and any("user:***@127.0.0.1" in m for m in said)
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert json.loads((run_dir / MLflowTracker.STATE_NAME).read_text())["tracking_uri"] == redact_url(uri)
    with pytest.warns(TrackingServerUnavailable):  # another store (another host) does not reuse the run
        other = MLflowTracker(run_dir, tracking_uri=f"http://user:{PASSWORD}@127.0.0.2:{free_port()}")
    assert other.run_id is None


def test_a_malformed_store_url_is_never_echoed_with_its_password(workdir, monkeypatch):
    for url in (f"postgresql://user:{PASSWORD}@127.0.0.1:notaport/slas", f"mysql://user:{PASSWORD}@127.0.0.1/slas",
                f"://user:{PASSWORD}@127.0.0.1/slas"):
        monkeypatch.setenv("SLAS_DATABASE_URL", url)
        for args in (("jobs", "list"), ("jobs", "submit", "tiny.yaml"), ("train", "tiny.yaml")):
            r = slas(*args)
            line = one_error_line(r)
            assert PASSWORD not in r.output and PASSWORD not in line and "bad database URL" in line, (args, line)
            assert "user:***@" in line, line
        with pytest.raises(StoreError) as info:
            open_store()
        assert PASSWORD not in str(info.value)


def _files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.slow
def test_a_job_tracking_to_a_url_with_a_password_never_writes_it_in_clear(workdir, monkeypatch):
    uri = f"http://user:{PASSWORD}@127.0.0.1:{free_port()}"  # a closed port: every record goes to the buffer
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SLAS_MLFLOW", "1")
    outputs = []
    r = slas("jobs", "submit", "tiny.yaml")
    outputs.append(r.output)
    assert r.exit_code == 0, err(r)
    with open_store() as store:
        job = store.list_jobs()[0]
        try:
            job = JobManager(store).wait(job.id, timeout=400)
        finally:
            if job.status not in ("completed", "failed", "cancelled") and job.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.pid, 9)
    run_dir = Path(job.run_dir)
    log = Path(job.log_path).read_text(errors="replace")
    assert job.status == "completed", log[-3000:]
    assert "user:***@127.0.0.1" in log  # the outage warning was written, masked
    assert json.loads((run_dir / "mlflow_state.json").read_text())["tracking_uri"] == redact_url(uri)
    assert (run_dir / "mlflow_buffer.jsonl").is_file()
    for args in (("show", job.id), ("list", "--json"), ("list",), ("logs", job.id)):
        r = slas("jobs", *args)
        assert r.exit_code == 0, err(r)
        outputs.append(r.output)
    assert _files_holding(workdir, PASSWORD) == [] and _files_holding(Path(os.environ["SLAS_HOME"]), PASSWORD) == []
    assert all(PASSWORD not in out for out in outputs)

    with open_store() as store:
        finished = store.create_job(name="b", config={}, run_dir="/r/b")
        store.finish_job(finished.id, "failed", error=f"MlflowException: API request to {uri}/api failed")
        assert PASSWORD not in store.get_job(finished.id).error  # an error is stored masked
        store.update_job(finished.id, error=f"launch failed: {uri}")
        assert PASSWORD not in store.get_job(finished.id).error
        with store.engine.begin() as conn:  # a row an older version wrote in clear is shown masked
            conn.execute(text("UPDATE jobs SET error = :e WHERE id = :i"),
                         {"e": f"launch failed: MLflow at {uri} refused", "i": job.id})
    for args in (("show", job.id), ("list", "--json")):
        r = slas("jobs", *args)
        assert r.exit_code == 0 and PASSWORD not in r.output and "user:***@127.0.0.1" in r.output, r.output


def test_a_bad_lock_budget_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("SLAS_STORE_LOCK_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="SLAS_STORE_LOCK_TIMEOUT='soon' is not a number of seconds"):
        open_store(f"sqlite:///{tmp_path / 'slas.db'}")


def test_a_locked_store_error_is_still_what_store_callers_catch(tmp_path):
    """run.py and others catch SQLAlchemy's errors to keep training: the one-line errors stay catchable."""
    db = tmp_path / "slas.db"
    with open_store(f"sqlite:///{db}", lock_timeout=0.2) as store:
        job = store.create_job(name="a", config={}, run_dir="/r")
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(OperationalError) as info:
                store.finish_job(job.id, "failed", error="x")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    assert isinstance(info.value, StoreLocked) and "\n" not in str(info.value)
