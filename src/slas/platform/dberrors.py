"""What the job store's database failures become: one-line errors, and retries while another process holds a lock.

A write that finds the database locked by another process (a CLI, another trainer, someone's ``sqlite3``
shell) is retried with backoff for up to ``SLAS_STORE_LOCK_TIMEOUT`` seconds (60 by default) before
:class:`StoreLocked` says so in one line. Every database error leaves the store as a one-line
:class:`StoreError` built from the driver's own message (never SQLAlchemy's, which carries the SQL statement
and its parameters: a whole config), and every URL in a message has its password masked.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError

from slas.credentials import redact_text, redact_url
from slas.errors import SlasError

LOCK_TIMEOUT_ENV = "SLAS_STORE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 60.0  # seconds a write waits for another process's lock before it gives up
_T = TypeVar("_T")


class StoreError(SlasError, RuntimeError):
    """The store cannot be opened, or a row asked for does not exist; the message is one line."""


class JobNotFound(StoreError, LookupError):
    """No job has this id."""


class EvalNotFound(StoreError, LookupError):
    """No evaluation has this id."""


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
