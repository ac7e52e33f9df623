"""Store writes a running job must never lose: written now, or queued on disk and replayed in order.

A trainer records its attempt, every checkpoint it publishes, its MLflow run and its end in the job store.
The store is bookkeeping, shared with CLIs and other jobs: another process may hold its lock for longer
than a write is willing to wait (:attr:`Store.lock_timeout`), or a PostgreSQL server may be restarting.
Such a write must neither stop training nor vanish, so :class:`DurableRecorder` appends it to
``store_pending.jsonl`` in the run dir (fsynced) and replays the queue, oldest first, before the next
write and at :meth:`DurableRecorder.close`. What is still queued when the process ends stays in the
run dir, and the next recorder on that run dir (a resume) replays it.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from slas.errors import one_line
from slas.platform.db import Store

PENDING_NAME = "store_pending.jsonl"
# the writes a running job makes, each idempotent or guarded on replay (see DurableRecorder._replay_one)
RECORDABLE = ("add_checkpoint", "sync_checkpoints", "set_mlflow_run_id", "set_attempt_resumed_from", "add_eval",
              "finish_job")
QUICK_TRY = 1.0  # seconds a write waits while older ones are queued: the store was just found locked


def transient(exc: BaseException) -> bool:
    """True for a store failure that a later try may not meet: a held lock, a lost or refused connection."""
    return isinstance(exc, OperationalError | InterfaceError)


@contextlib.contextmanager
def _patience(store: Store, seconds: float) -> Iterator[None]:
    """Let ``store``'s calls wait at most ``seconds`` for a lock inside the block."""
    saved = store.lock_timeout
    store.lock_timeout = min(saved, seconds)
    try:
        yield
    finally:
        store.lock_timeout = saved


class DurableRecorder:
    """The job store as a running job writes to it: nothing is lost while the store is locked or away.

    ``record(what, method, *args, **kwargs)`` calls ``store.<method>(*args, **kwargs)`` (one of
    :data:`RECORDABLE`); ``what`` names it in warnings ("a checkpoint"). A write that fails for a reason
    that passes (:func:`transient`) is queued in ``run_dir/store_pending.jsonl``; while anything is queued,
    later writes join the queue after one short try to replay it, so a locked store costs a training
    step about a second, not the store's whole retry budget each time. Other errors raise, as the
    store's own would.
    """

    def __init__(self, store: Store, run_dir: str | Path, *, quick_try: float = QUICK_TRY) -> None:
        self.store = store
        self.path = Path(run_dir) / PENDING_NAME
        self.quick_try = float(quick_try)
        self._warned = False

    # ------------------------------------------------------------------ public
    @property
    def pending(self) -> int:
        """How many writes wait in the queue file."""
        return len(self._read())

    def record(self, what: str, method: str, *args: Any, **kwargs: Any) -> bool:
        """Write now (after anything queued before it); True when it landed, False when it was queued."""
        if method not in RECORDABLE:
            raise ValueError(f"DurableRecorder records {', '.join(RECORDABLE)}, not {method!r}")
        entry = json.loads(json.dumps(
            {"what": what, "method": method, "args": list(args), "kwargs": kwargs, "pid": os.getpid()}, default=str
        ))
        if self.path.is_file():
            with _patience(self.store, self.quick_try):
                if not self._replay():
                    self._append(entry)
                    return False
        try:
            self._call(entry)
        except Exception as exc:
            if not transient(exc):
                raise
            self._append(entry)
            self._warn_queued(entry, exc)
            return False
        return True

    def flush(self) -> bool:
        """Replay the queue now, waiting the store's full lock budget; True when nothing is left."""
        return self._replay()

    def close(self) -> int:
        """Replay what is queued; returns how many writes are still waiting (they stay on disk, warned)."""
        self.flush()
        left = self.pending
        if left:
            warnings.warn(
                f"job store {self.store.where}: {left} write(s) still queued in {self.path}; they are replayed "
                f"when a job next runs in this run dir (slas train --resume, slas jobs resume)",
                RuntimeWarning, stacklevel=2,
            )
        return left

    # ------------------------------------------------------------------ the queue
    def _call(self, entry: dict[str, Any]) -> None:
        getattr(self.store, entry["method"])(*entry["args"], **entry["kwargs"])

    def _replay(self) -> bool:
        """Write the queued entries in order; stop (keeping the rest) at the first transient failure."""
        entries = self._read()
        for i, entry in enumerate(entries):
            try:
                self._replay_one(entry)
            except Exception as exc:
                if transient(exc):
                    self._rewrite(entries[i:])
                    return False
                warnings.warn(f"job store: dropped a queued write of {entry.get('what')}: {one_line(exc)}",
                              RuntimeWarning, stacklevel=3)
        self._rewrite([])
        return True

    def _replay_one(self, entry: dict[str, Any]) -> None:
        """Carry out a queued write. An end state queued by an earlier process is only written while the
        job still names that process as its runner: a newer attempt must not be ended by an old one."""
        if entry["method"] == "finish_job" and entry.get("pid") != os.getpid():
            job = self.store.get_job(entry["args"][0])
            if not (job.is_active and job.pid == entry.get("pid")):
                warnings.warn(
                    f"job store: dropped the queued end state of process {entry.get('pid')} for job {job.id}, "
                    f"which is {job.status} (pid {job.pid}) now", RuntimeWarning, stacklevel=4)
                return
        self._call(entry)

    def _read(self) -> list[dict[str, Any]]:
        """The queued entries; a line cut short by a crash mid-append is skipped (its write was never
        acknowledged, and the trainer's resume re-syncs checkpoints from disk anyway)."""
        try:
            lines = self.path.read_bytes().decode("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{self.path} line {n} is not a queued write (cut short?): skipped",
                              RuntimeWarning, stacklevel=4)
        return entries

    def _append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _rewrite(self, entries: list[dict[str, Any]]) -> None:
        """Replace the queue by ``entries`` atomically; none left removes the file."""
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(e) + "\n" for e in entries))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _warn_queued(self, entry: dict[str, Any], exc: BaseException) -> None:
        """One warning per recorder: the first write that had to wait on disk."""
        if self._warned:
            return
        self._warned = True
        warnings.warn(f"{one_line(exc)}; {entry['what']} and the job's later writes wait in {self.path} and are "
                      f"written, in order, once the store answers", RuntimeWarning, stacklevel=3)


__all__ = ["PENDING_NAME", "RECORDABLE", "DurableRecorder", "transient"]
