"""The job store: opening it (SQLite or PostgreSQL, migrations) and its API over jobs, attempts, checkpoints,
sample sets, samples, ratings and evaluations (the tables are in :mod:`slas.platform.schema`).

Every training run, submitted or started with ``slas train``, gets a row here so ``slas jobs list`` shows
all of them. SQLite under ``.slas/`` (``SLAS_HOME`` overrides the folder) is the default, in WAL mode so
that the trainer and the CLI can write at the same time; ``SLAS_DATABASE_URL`` points it at PostgreSQL
for a team. The schema is owned by the Alembic migrations shipped in ``slas/platform/migrations``; they
run on every :func:`open_store`, so an old database is upgraded in place. Every write is one committed
transaction: a crash never leaves half a write behind.

Contention and damage (:mod:`slas.platform.dberrors`): a call that finds the database locked by another
process is retried with backoff for up to ``SLAS_STORE_LOCK_TIMEOUT`` seconds, then fails in one line; a
running job's writes go through :class:`~slas.platform.durable.DurableRecorder`, which queues them on
disk instead of losing them. Every database error leaves the store as a one-line :class:`StoreError`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from sqlalchemy import (
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from slas.credentials import redact_text, redact_url
from slas.paths import slas_home
from slas.platform.dberrors import (
    EvalNotFound,
    JobNotFound,
    StoreError,
    retrying,
    store_lock_timeout,
    where,
)
from slas.platform.schema import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    JOB_STATUSES,
    Attempt,
    Checkpoint,
    Evaluation,
    Job,
    Rating,
    Sample,
    SampleSet,
    hostname,
    utcnow,
)

VERSION_TABLE = "slas_alembic_version"  # not "alembic_version": MLflow's own schema may share a database
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------- opening


def default_url() -> str:
    """``$SLAS_DATABASE_URL``, else ``slas.db`` in :func:`slas.paths.slas_home`."""
    env = os.environ.get("SLAS_DATABASE_URL")
    if env:
        return env
    return f"sqlite:///{slas_home() / 'slas.db'}"


def _bad_url(url: str, why: str) -> StoreError:
    """The error for a URL that cannot be used; it shows the URL with its password masked, never whole."""
    return StoreError(f"bad database URL {redact_url(url)!r} (SLAS_DATABASE_URL): {redact_text(why)}; "
                      f"expected e.g. postgresql://USER:PASSWORD@HOST:5432/DB or sqlite:////path/to/slas.db")


def _normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's bare default is psycopg2, not a dependency)."""
    try:
        u = make_url(url)
    except ArgumentError:
        raise _bad_url(url, "not a URL") from None
    except ValueError:  # SQLAlchemy's int() of a port that is not a number
        raise _bad_url(url, "the port is not a number") from None
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def _attempt_ms(lock_timeout: float) -> int:
    """SQLite's own wait per attempt: short, so the retry loop (not the driver) keeps the whole budget."""
    return max(50, int(min(1.0, lock_timeout) * 1000))


def _sqlite_pragmas(busy_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")  # first: the next pragma may wait for a lock
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the trainer's writes
        cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints of the WAL; safe with WAL
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def make_engine(url: str, *, lock_timeout: float | None = None) -> Engine:
    """An engine for ``url``: SQLite gets WAL mode and a short busy timeout on every connection (the
    store's retry loop does the longer waiting, up to ``lock_timeout``)."""
    url = _normalise_url(url)
    u = make_url(url)
    try:
        if u.get_backend_name() == "sqlite":
            if u.database and u.database != ":memory:":
                Path(u.database).parent.mkdir(parents=True, exist_ok=True)
            busy_ms = _attempt_ms(store_lock_timeout() if lock_timeout is None else lock_timeout)
            engine = create_engine(url, connect_args={"timeout": busy_ms / 1000})
            event.listen(engine, "connect", _sqlite_pragmas(busy_ms))
            return engine
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError) as exc:  # an unknown dialect or a driver that is not installed
        raise _bad_url(url, f"no database driver for {u.drivername!r} ({type(exc).__name__})") from None
    except OSError as exc:
        raise StoreError(f"cannot create the job store folder for {redact_url(url)}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _migration_lock(engine: Engine, conn: Connection) -> Iterator[None]:
    """One migrator at a time: a PostgreSQL advisory lock, or a file lock beside the SQLite file."""
    if engine.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(7154017)"))  # released with the transaction
        yield
        return
    db = engine.url.database
    if engine.dialect.name != "sqlite" or not db or db == ":memory:":
        yield
        return
    with FileLock(f"{db}.migrate.lock"):
        yield


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Any:
    """The Alembic config of the shipped migrations, bound to a connection (or a URL for offline SQL)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_table", VERSION_TABLE)
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """``alembic upgrade head`` on ``engine``, in one transaction, under a lock."""
    from alembic import command

    with engine.begin() as conn, _migration_lock(engine, conn):
        command.upgrade(alembic_config(conn), revision)


def open_store(url: str | None = None, *, migrate: bool = True, lock_timeout: float | None = None) -> Store:
    """Open (and create or upgrade) the job store at ``url`` (default: :func:`default_url`).

    ``lock_timeout`` (default ``$SLAS_STORE_LOCK_TIMEOUT`` or 60 s) bounds how long each call waits for
    another process's lock. A store that cannot be reached, is locked or is not a database raises a
    one-line :class:`StoreError`.
    """
    url = _normalise_url(url or default_url())
    timeout = store_lock_timeout() if lock_timeout is None else float(lock_timeout)
    engine = make_engine(url, lock_timeout=timeout)
    if migrate:
        try:
            retrying(lambda: upgrade(engine), url, timeout, opening=True)
        except StoreError:
            engine.dispose()
            raise
    return Store(engine, lock_timeout=timeout)


# ---------------------------------------------------------------------------------------------- the API


def _guarded(method: Callable[..., _T]) -> Callable[..., _T]:
    """A store call that retries while another process holds the lock and fails in one line (see
    :func:`retrying`). Each guarded method is one transaction, so calling it again is safe."""

    @functools.wraps(method)
    def call(self: Store, *args: Any, **kwargs: Any) -> _T:
        # a generator argument would be used up by a failed try: keep its items for the next one
        args = tuple(list(a) if isinstance(a, Iterator) else a for a in args)
        kwargs = {k: list(v) if isinstance(v, Iterator) else v for k, v in kwargs.items()}
        return self._guard(lambda: method(self, *args, **kwargs))

    return call


class Store:
    """Reads and writes of the job store; each write method is one committed transaction.

    Rows come back detached (``expire_on_commit=False``): their columns stay readable after the session.
    Every public method waits (with backoff) up to :attr:`lock_timeout` seconds for a lock another
    process holds, then raises :class:`StoreLocked`; any other database error is a one-line
    :class:`StoreDatabaseFailure`.
    """

    def __init__(self, engine: Engine, *, lock_timeout: float | None = None) -> None:
        self.engine = engine
        self.lock_timeout = store_lock_timeout() if lock_timeout is None else float(lock_timeout)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._calls = threading.local()  # a guarded method calling another retries once, as a whole

    @property
    def url(self) -> str:
        """The full URL (password included), to hand to a child process; never print it (see :attr:`where`)."""
        return self.engine.url.render_as_string(hide_password=False)

    @property
    def where(self) -> str:
        """The store as messages name it: a SQLite file, or the URL with its password masked."""
        return where(self.engine.url)

    def _guard(self, fn: Callable[[], _T]) -> _T:
        if getattr(self._calls, "active", False):
            return fn()
        self._calls.active = True
        try:
            return retrying(fn, self.engine.url, self.lock_timeout)
        finally:
            self._calls.active = False

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @staticmethod
    def _job(session: Session, job_id: int) -> Job:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return job

    # ------------------------------------------------------------------ jobs
    @_guarded
    def create_job(
        self,
        *,
        name: str,
        config: Mapping[str, Any],
        run_dir: str | Path,
        backend: str = "local",
        workdir: str | Path | None = None,
        status: str = "queued",
        log_path: str | Path | None = None,
    ) -> Job:
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}; one of {', '.join(JOB_STATUSES)}")
        job = Job(
            name=name, config=dict(config), run_dir=str(run_dir), backend=backend, status=status,
            workdir=str(workdir if workdir is not None else Path.cwd()),
            log_path=str(log_path) if log_path is not None else None, created_at=utcnow(),
        )
        with self._write() as s:
            s.add(job)
        return job

    @_guarded
    def get_job(self, job_id: int) -> Job:
        with self._read() as s:
            return self._job(s, job_id)

    @_guarded
    def list_jobs(self, *, status: str | Iterable[str] | None = None, limit: int | None = None) -> list[Job]:
        """Newest first."""
        q = select(Job).order_by(Job.id.desc())
        if status is not None:
            q = q.where(Job.status.in_([status] if isinstance(status, str) else list(status)))
        if limit is not None:
            q = q.limit(limit)
        with self._read() as s:
            return list(s.scalars(q))

    @_guarded
    def find_jobs_by_run_dir(self, run_dir: str | Path) -> list[Job]:
        """Jobs writing to ``run_dir``, newest first."""
        with self._read() as s:
            return list(s.scalars(select(Job).where(Job.run_dir == str(run_dir)).order_by(Job.id.desc())))

    @_guarded
    def update_job(self, job_id: int, **fields: Any) -> Job:
        """Set columns of a job (names as in :class:`Job`)."""
        with self._write() as s:
            job = self._job(s, job_id)
            for key, value in fields.items():
                if key not in Job.__table__.columns or key == "id":
                    raise ValueError(f"jobs has no column {key!r}")
                setattr(job, key, redact_text(value) if key == "error" and isinstance(value, str) else value)
        return job

    @_guarded
    def requeue_job(self, job_id: int, *, config: Mapping[str, Any] | None = None) -> Job:
        """Put a job back in the queue for another attempt (resume): clears its end state."""
        with self._write() as s:
            job = self._job(s, job_id)
            job.status, job.finished_at, job.error, job.pid = "queued", None, None, None
            if config is not None:
                job.config = dict(config)
        return job

    @_guarded
    def set_mlflow_run_id(self, job_id: int, run_id: str) -> None:
        """Link the job to its MLflow run (a resume continues that run)."""
        self.update_job(job_id, mlflow_run_id=run_id)

    @_guarded
    def finish_job(self, job_id: int, status: str, *, error: str | None = None, exit_code: int | None = None) -> Job:
        """Record a job's end state, and close its open attempt with the same status."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"a job ends as one of {', '.join(FINAL_STATUSES)}, not {status!r}")
        error = redact_text(error) if error is not None else None  # an error may quote a URL with a password
        now = utcnow()
        with self._write() as s:
            job = self._job(s, job_id)
            job.status, job.finished_at, job.error = status, now, error
            open_attempts = s.scalars(
                select(Attempt).where(Attempt.job_id == job_id, Attempt.finished_at.is_(None))
            )
            for att in open_attempts:
                att.status, att.finished_at, att.error, att.exit_code = status, now, error, exit_code
        return job

    @_guarded
    def fail_lost_job(self, job_id: int, *, pid: int, error: str) -> Job:
        """Mark a job failed because its process ``pid`` is gone, unless it ended (or moved on) meanwhile."""
        error = redact_text(error)
        now = utcnow()
        with self._write() as s:
            job = s.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
            if job is None:
                raise JobNotFound(f"no job with id {job_id}")
            if job.status not in ACTIVE_STATUSES or job.pid != pid:
                return job  # it recorded its own end state, or a new attempt started, since it was read
            job.status, job.finished_at, job.error = "failed", now, error
            open_attempts = s.scalars(
                select(Attempt).where(Attempt.job_id == job_id, Attempt.finished_at.is_(None))
            )
            for att in open_attempts:
                att.status, att.finished_at, att.error = "failed", now, error
        return job

    # ------------------------------------------------------------------ attempts
    @_guarded
    def begin_attempt(
        self, job_id: int, *, pid: int, host: str | None = None, resumed_from: str | Path | None = None
    ) -> Attempt:
        """A process starts working on a queued job: the job turns running and gets a new attempt row.

        Raises :class:`StoreError` when the job is not queued (it was cancelled before it started, or
        another process runs it): the caller must then not train.
        """
        host = host or hostname()
        now = utcnow()
        with self._write() as s:
            job = s.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
            if job is None:
                raise JobNotFound(f"no job with id {job_id}")
            if job.status != "queued":
                raise StoreError(f"job {job_id} is {job.status}, not queued; not starting it")
            number = (s.scalar(select(func.max(Attempt.number)).where(Attempt.job_id == job_id)) or 0) + 1
            att = Attempt(job_id=job_id, number=number, host=host, pid=pid, started_at=now, status="running",
                          resumed_from=str(resumed_from) if resumed_from is not None else None)
            s.add(att)
            job.status, job.pid, job.host, job.started_at = "running", pid, host, job.started_at or now
        return att

    @_guarded
    def set_attempt_resumed_from(self, attempt_id: int, path: str | Path) -> None:
        with self._write() as s:
            att = s.get(Attempt, attempt_id)
            if att is None:
                raise StoreError(f"no attempt with id {attempt_id}")
            att.resumed_from = str(path)

    @_guarded
    def list_attempts(self, job_id: int) -> list[Attempt]:
        with self._read() as s:
            return list(s.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)))

    # ------------------------------------------------------------------ checkpoints
    @_guarded
    def add_checkpoint(self, job_id: int, iteration: int, path: str | Path) -> Checkpoint:
        """Record a published checkpoint; writing the same iteration again replaces the row."""
        with self._write() as s:
            self._job(s, job_id)
            row = s.scalars(
                select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.iteration == iteration)
            ).one_or_none()
            if row is None:
                row = Checkpoint(job_id=job_id, iteration=iteration, path=str(path), created_at=utcnow())
                s.add(row)
            else:
                row.path, row.created_at = str(path), utcnow()
        return row

    @_guarded
    def sync_checkpoints(self, job_id: int, found: Iterable[tuple[int, str | Path]]) -> int:
        """Add rows for checkpoints found on disk but not recorded (a process killed between publishing a
        checkpoint and recording it); returns how many were added."""
        with self._write() as s:
            self._job(s, job_id)
            known = set(s.scalars(select(Checkpoint.iteration).where(Checkpoint.job_id == job_id)))
            new = [Checkpoint(job_id=job_id, iteration=it, path=str(path), created_at=utcnow())
                   for it, path in found if it not in known]
            s.add_all(new)
        return len(new)

    @_guarded
    def list_checkpoints(self, job_id: int) -> list[Checkpoint]:
        """Oldest first."""
        with self._read() as s:
            q = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.iteration)
            return list(s.scalars(q))

    @_guarded
    def job_of_checkpoint(self, path: str | Path) -> int | None:
        """The job that published the checkpoint at ``path`` (as recorded: resolved), newest first; ``None``
        when no job recorded it (a copied checkpoint, a model dir)."""
        q = select(Checkpoint.job_id).where(Checkpoint.path == str(path)).order_by(Checkpoint.id.desc()).limit(1)
        with self._read() as s:
            return s.scalar(q)

    @_guarded
    def latest_checkpoints(self, job_ids: Iterable[int]) -> dict[int, int]:
        """The newest recorded checkpoint iteration of each job that has one."""
        ids = list(job_ids)
        if not ids:
            return {}
        q = select(Checkpoint.job_id, func.max(Checkpoint.iteration)).where(Checkpoint.job_id.in_(ids))
        with self._read() as s:
            return {int(j): int(it) for j, it in s.execute(q.group_by(Checkpoint.job_id))}

    # ------------------------------------------------------------------ samples and ratings
    @_guarded
    def create_sample_set(self, name: str, *, job_id: int | None = None, meta: Mapping[str, Any] | None = None) -> SampleSet:
        row = SampleSet(name=name, job_id=job_id, meta=dict(meta or {}), created_at=utcnow())
        with self._write() as s:
            if job_id is not None:
                self._job(s, job_id)
            s.add(row)
        return row

    @_guarded
    def add_samples(self, sample_set_id: int, samples: Iterable[Mapping[str, Any]]) -> list[Sample]:
        """Add samples (keys as :class:`Sample`'s columns: checkpoint_label, prompt, seed, image_path, ...)."""
        now = utcnow()
        with self._write() as s:
            if s.get(SampleSet, sample_set_id) is None:
                raise StoreError(f"no sample set with id {sample_set_id}")
            rows = []
            for item in samples:
                unknown = set(item) - set(Sample.__table__.columns.keys())
                if unknown:
                    raise ValueError(f"samples have no column(s) {sorted(unknown)}")
                rows.append(Sample(**{"created_at": now, "rewards": {}, **item, "sample_set_id": sample_set_id}))
            s.add_all(rows)
        return rows

    @_guarded
    def update_sample_set_meta(self, sample_set_id: int, **meta: Any) -> SampleSet:
        """Merge keys into a sample set's ``meta`` (e.g. ``status="complete"`` once every image is in)."""
        with self._write() as s:
            row = s.get(SampleSet, sample_set_id)
            if row is None:
                raise StoreError(f"no sample set with id {sample_set_id}")
            row.meta = {**(row.meta or {}), **meta}  # a new dict: JSON columns do not track in-place edits
        return row

    @_guarded
    def get_sample_set(self, sample_set_id: int) -> SampleSet:
        with self._read() as s:
            row = s.get(SampleSet, sample_set_id)
            if row is None:
                raise StoreError(f"no sample set with id {sample_set_id}")
            return row

    @_guarded
    def list_sample_sets(self) -> list[SampleSet]:
        """Newest first."""
        with self._read() as s:
            return list(s.scalars(select(SampleSet).order_by(SampleSet.id.desc())))

    @_guarded
    def list_samples(self, sample_set_id: int) -> list[Sample]:
        with self._read() as s:
            return list(s.scalars(select(Sample).where(Sample.sample_set_id == sample_set_id).order_by(Sample.id)))

    @_guarded
    def add_rating(
        self,
        sample_id: int,
        *,
        rater: str,
        choice: str | None = None,
        score: float | None = None,
        comment: str | None = None,
        other_sample_id: int | None = None,
        tags: Iterable[str] | None = None,
    ) -> Rating:
        """Rate one sample (``score``) or a pair (``other_sample_id`` and a ``choice`` such as a/b/tie), with
        optional free-text ``tags`` (the review UI's "extra hand", "duplicate product", ...)."""
        if choice is None and score is None:
            raise ValueError("a rating needs a choice or a score")
        tag_list = [str(t) for t in tags] if tags is not None else None
        row = Rating(sample_id=sample_id, other_sample_id=other_sample_id, rater=rater, choice=choice,
                     score=score, comment=comment, tags=tag_list or None, created_at=utcnow())
        with self._write() as s:
            for sid in (sample_id, other_sample_id):
                if sid is not None and s.get(Sample, sid) is None:
                    raise StoreError(f"no sample with id {sid}")
            s.add(row)
        return row

    @_guarded
    def delete_rating(self, rating_id: int, *, rater: str) -> Rating:
        """Remove a rating ``rater`` made (the review UI's undo of a mis-keyed rating); another rater's
        rating, or one that does not exist, is a :class:`StoreError` and nothing is removed."""
        with self._write() as s:
            row = s.get(Rating, rating_id)
            if row is None or row.rater != rater:
                raise StoreError(f"no rating {rating_id} by {rater!r} to remove")
            s.delete(row)
        return row

    @_guarded
    def list_ratings(self, *, sample_set_id: int | None = None, rater: str | None = None) -> list[Rating]:
        q = select(Rating).order_by(Rating.id)
        if sample_set_id is not None:
            q = q.join(Sample, Rating.sample_id == Sample.id).where(Sample.sample_set_id == sample_set_id)
        if rater is not None:
            q = q.where(Rating.rater == rater)
        with self._read() as s:
            return list(s.scalars(q))

    # ------------------------------------------------------------------ evaluations
    @_guarded
    def add_eval(
        self,
        *,
        checkpoint: str | Path,
        benchmark: str,
        scores: Mapping[str, float],
        n_images: int,
        settings: Mapping[str, Any] | None = None,
        job_id: int | None = None,
        iteration: int | None = None,
        results_path: str | Path | None = None,
        images_dir: str | Path | None = None,
        replace: bool = False,
    ) -> Evaluation:
        """Record an evaluation: ``scores`` per tag plus ``overall`` (finite numbers), the ``settings`` that
        make two evaluations comparable, and where its per-image results and images are.

        ``replace``: a row of the same job, iteration, benchmark and settings is overwritten instead of
        added. A training run passes it, so an iteration evaluated again after a resume (or a queued write
        replayed twice) leaves one row, the one of the weights the checkpoint holds.
        """
        clean_scores = _eval_scores(scores)
        clean_settings = json.loads(json.dumps(dict(settings or {}), default=str))  # paths as text, JSON-safe
        if int(n_images) < 0:
            raise ValueError(f"an evaluation's n_images must be >= 0, got {n_images}")
        fields = {"checkpoint": str(checkpoint), "iteration": iteration, "benchmark": str(benchmark),
                  "settings": clean_settings, "scores": clean_scores, "n_images": int(n_images),
                  "results_path": str(results_path) if results_path is not None else None,
                  "images_dir": str(images_dir) if images_dir is not None else None, "created_at": utcnow()}
        with self._write() as s:
            if job_id is not None:
                self._job(s, job_id)
            row = self._same_eval(s, job_id, iteration, benchmark, clean_settings) if replace else None
            if row is None:
                row = Evaluation(job_id=job_id, **fields)
                s.add(row)
            else:
                for key, value in fields.items():
                    setattr(row, key, value)
        return row

    @staticmethod
    def _same_eval(s: Session, job_id: int | None, iteration: int | None, benchmark: str,
                   settings: dict[str, Any]) -> Evaluation | None:
        """The row :meth:`add_eval` replaces; settings are compared here, not in SQL (PostgreSQL's ``json``
        type has no equality operator)."""
        if job_id is None or iteration is None:
            return None
        q = select(Evaluation).where(Evaluation.job_id == job_id, Evaluation.iteration == iteration,
                                     Evaluation.benchmark == benchmark).order_by(Evaluation.id.desc())
        return next((row for row in s.scalars(q) if row.settings == settings), None)

    @_guarded
    def get_eval(self, eval_id: int) -> Evaluation:
        with self._read() as s:
            row = s.get(Evaluation, eval_id)
            if row is None:
                raise EvalNotFound(f"no evaluation with id {eval_id}")
            return row

    @_guarded
    def list_evals(
        self,
        *,
        job_id: int | None = None,
        benchmark: str | None = None,
        checkpoint: str | Path | None = None,
        limit: int | None = None,
    ) -> list[Evaluation]:
        """Evaluations, newest first, of one job, benchmark and/or checkpoint (path as recorded)."""
        q = select(Evaluation).order_by(Evaluation.id.desc())
        if job_id is not None:
            q = q.where(Evaluation.job_id == job_id)
        if benchmark is not None:
            q = q.where(Evaluation.benchmark == benchmark)
        if checkpoint is not None:
            q = q.where(Evaluation.checkpoint == str(checkpoint))
        if limit is not None:
            q = q.limit(limit)
        with self._read() as s:
            return list(s.scalars(q))


def _eval_scores(scores: Mapping[str, float]) -> dict[str, float]:
    """Scores as the evals table keeps them: finite floats by tag, ``overall`` among them. A NaN would be
    refused by PostgreSQL's JSON parser after the evaluation's work was done, so it is refused here, in one line."""
    if "overall" not in scores:
        raise ValueError(f"an evaluation's scores need an 'overall' entry; got {sorted(scores)}")
    out = {}
    for tag, value in scores.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"evaluation score {tag!r} is not a number: {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"evaluation score {tag!r} is not finite: {number}")
        out[str(tag)] = number
    return out
