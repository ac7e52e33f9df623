"""The job store: jobs, attempts, checkpoints, sample sets, samples and ratings (SQLAlchemy 2.x ORM).

Every training run, submitted or started with ``slas train``, gets a row here so ``slas jobs list`` shows
all of them. SQLite under ``.slas/`` (``SLAS_HOME`` overrides the folder) is the default, in WAL mode so
that the trainer and the CLI can write at the same time; ``SLAS_DATABASE_URL`` points it at PostgreSQL
for a team. The schema is owned by the Alembic migrations shipped in ``slas/platform/migrations``; they
run on every :func:`open_store`, so an old database is upgraded in place. Every write is one committed
transaction: a crash never leaves half a write behind.

Contention and damage: a write that finds the database locked by another process (a CLI, another
trainer, someone's ``sqlite3`` shell) is retried with backoff for up to ``SLAS_STORE_LOCK_TIMEOUT``
seconds (60 by default) before :class:`StoreLocked` says so in one line; a running job's writes go
through :class:`~slas.platform.durable.DurableRecorder`, which queues them on disk instead of losing
them. Every database error leaves this module as a one-line :class:`StoreError` built from the driver's
own message (never SQLAlchemy's, which carries the SQL statement and its parameters: a whole config),
and every URL in a message has its password masked.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from slas.credentials import redact_text, redact_url
from slas.errors import SlasError
from slas.paths import slas_home

JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
ACTIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("completed", "failed", "cancelled")
VERSION_TABLE = "slas_alembic_version"  # not "alembic_version": MLflow's own schema may share a database
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
LOCK_TIMEOUT_ENV = "SLAS_STORE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 60.0  # seconds a write waits for another process's lock before it gives up
_T = TypeVar("_T")


class StoreError(SlasError, RuntimeError):
    """The store cannot be opened, or a row asked for does not exist; the message is one line."""


class JobNotFound(StoreError, LookupError):
    """No job has this id."""


class StoreDatabaseFailure(StoreError):
    """A database error said in one line: no SQL statement, no parameters, no password.

    The concrete classes also derive from the SQLAlchemy class of the error they replace (see
    :func:`_one_line_class`), so code that catches ``SQLAlchemyError``/``OperationalError``/``IntegrityError``
    keeps catching them; the driver's exception stays in :attr:`orig`.
    """

    def __init__(self, message: str, orig: BaseException | None = None) -> None:
        Exception.__init__(self, message)
        self.orig, self.statement, self.params = orig, None, None
        self.hide_parameters, self.ismulti, self.connection_invalidated = True, None, False
        self.detail: list[str] = []
        self.code = None

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0],))


class StoreLocked(StoreDatabaseFailure, OperationalError):
    """Another process held the store's lock for longer than this process's retry budget."""


@functools.cache
def _one_line_class(cls: type[StatementError]) -> type[StoreDatabaseFailure]:
    """A :class:`StoreDatabaseFailure` that is also a ``cls`` (``StoreIntegrityError`` for ``IntegrityError``...)."""
    doc = f"A {cls.__name__} from the job store, said in one line."
    return type(f"Store{cls.__name__}", (StoreDatabaseFailure, cls), {"__doc__": doc, "__module__": __name__})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def hostname() -> str:
    return socket.gethostname()


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone, so it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One training run: its resolved config, where it runs and writes, and how it ended."""

    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(f"status IN {JOB_STATUSES}", name="ck_jobs_status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    backend: Mapped[str] = mapped_column(String(32), default="local")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    run_dir: Mapped[str] = mapped_column(Text)
    workdir: Mapped[str] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    log_path: Mapped[str | None] = mapped_column(Text)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


class Attempt(Base):
    """One start or resume of a job: which process ran it and how it ended."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_attempts_job_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="running")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    resumed_from: Mapped[str | None] = mapped_column(Text)


class Checkpoint(Base):
    """A complete checkpoint the trainer published (one row per job and iteration)."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "iteration", name="uq_checkpoints_job_iteration"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SampleSet(Base):
    """A set of images rendered for comparison (checkpoints x prompts x seeds): the review UI's input."""

    __tablename__ = "sample_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Sample(Base):
    """One rendered image: which checkpoint, prompt and seed made it, and its reward components."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_set_id: Mapped[int] = mapped_column(ForeignKey("sample_sets.id", ondelete="CASCADE"), index=True)
    checkpoint_label: Mapped[str] = mapped_column(String(200))
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)
    image_path: Mapped[str] = mapped_column(Text)
    rewards: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Rating(Base):
    """A human judgement of one sample (``score``) or of a pair (``choice`` between sample and other)."""

    __tablename__ = "ratings"
    __table_args__ = (CheckConstraint("choice IS NOT NULL OR score IS NOT NULL", name="ck_ratings_value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), index=True)
    other_sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"))
    rater: Mapped[str] = mapped_column(String(200))
    choice: Mapped[str | None] = mapped_column(String(32))
    score: Mapped[float | None] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


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


def store_lock_timeout() -> float:
    """How long a store call waits for another process's lock: ``$SLAS_STORE_LOCK_TIMEOUT`` seconds, or 60."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise StoreError(f"{LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds (e.g. 60)")
    return value


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


def where(url: Any) -> str:
    """The store as a message names it: the file of a SQLite store, else its URL with the password masked."""
    u = make_url(url) if isinstance(url, str) else url
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return u.database
    return redact_url(u)


def _reason(exc: BaseException) -> str:
    """The driver's first line for ``exc`` (SQLAlchemy's own text adds the SQL and its parameters)."""
    orig = getattr(exc, "orig", None)
    source = orig if orig is not None else exc
    lines = [line.strip() for line in str(source).splitlines() if line.strip()]
    return redact_text(lines[0] if lines else type(source).__name__)[:300]


_RETRYABLE_SQLSTATES = ("40001", "40P01", "55P03")  # serialization failure, deadlock, lock not available


def is_locked(exc: BaseException) -> bool:
    """True when ``exc`` means another transaction holds a lock this one needs: trying again later helps."""
    if isinstance(exc, StoreLocked):
        return True
    if not isinstance(exc, DBAPIError) or isinstance(exc, StoreDatabaseFailure):
        return False
    orig = exc.orig
    if getattr(orig, "sqlite_errorcode", None) in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
        return True
    if getattr(orig, "sqlstate", None) in _RETRYABLE_SQLSTATES:
        return True
    return isinstance(exc, OperationalError) and "locked" in str(orig).lower()


def _damaged(exc: DBAPIError) -> bool:
    """True for a SQLite file that is not (or no longer) a database: SQLITE_NOTADB or SQLITE_CORRUPT."""
    if getattr(exc.orig, "sqlite_errorcode", None) in (11, 26):
        return True
    text = str(exc.orig).lower()
    return "file is not a database" in text or "malformed" in text


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def one_line_error(
    exc: StatementError, url: Any, *, waited: float = 0.0, opening: bool = False
) -> StoreDatabaseFailure:
    """``exc`` as a one-line store error naming the store and, where there is one, what to do."""
    place = where(url)
    if is_locked(exc):
        return StoreLocked(
            f"job store {place} is locked by another process; retried for {_seconds(waited)} s "
            f"(set {LOCK_TIMEOUT_ENV}=SECONDS to wait longer, or stop what holds it)", exc.orig)
    cls = _one_line_class(type(exc))
    if isinstance(exc, DBAPIError) and _damaged(exc):
        return cls(f"job store {place} is damaged ({_reason(exc)}): move that file aside and run again to start "
                   f"an empty store, or restore it from a backup", exc.orig)
    if opening:
        return cls(f"cannot open the job store at {redact_url(url)}: {_reason(exc)}", exc.orig)
    return cls(f"job store {place}: {_reason(exc)}", exc.orig)


def retrying(fn: Callable[[], _T], url: Any, lock_timeout: float, *, opening: bool = False) -> _T:
    """``fn()``, called again with backoff while the store is locked, for up to ``lock_timeout`` seconds.

    ``fn`` must be one whole transaction (a failed one is rolled back, so running it again is safe). Any
    database error that is left comes out as a one-line :class:`StoreDatabaseFailure`.
    """
    start = time.monotonic()
    delay = 0.05
    while True:
        try:
            return fn()
        except StatementError as exc:
            if isinstance(exc, StoreDatabaseFailure):
                raise
            waited = time.monotonic() - start
            if not is_locked(exc) or waited + delay > lock_timeout:
                raise one_line_error(exc, url, waited=waited, opening=opening) from None
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


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
    ) -> Rating:
        """Rate one sample (``score``) or a pair (``other_sample_id`` and a ``choice`` such as a/b/tie)."""
        if choice is None and score is None:
            raise ValueError("a rating needs a choice or a score")
        row = Rating(sample_id=sample_id, other_sample_id=other_sample_id, rater=rater, choice=choice,
                     score=score, comment=comment, created_at=utcnow())
        with self._write() as s:
            for sid in (sample_id, other_sample_id):
                if sid is not None and s.get(Sample, sid) is None:
                    raise StoreError(f"no sample with id {sid}")
            s.add(row)
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
