"""One live writer per run dir: a lock that dies with its process, and a note saying who holds it.

A job holds its run dir (``<run dir>/.slas.lock``, an OS file lock through ``filelock``: released when the
process ends, however it ends) from before its job row is written until it finishes. A second ``slas train``
or job on the same run dir is refused in one line naming the holder, instead of moving the live job's
outputs aside while it keeps writing. A process may take the same run dir again (tests build several
trainers on one dir in turn); only other processes are refused.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from slas.errors import SlasError

LOCK_NAME = ".slas.lock"
OWNER_NAME = ".slas-owner.json"
_HELD: dict[Path, FileLock] = {}


class RunDirBusy(SlasError, RuntimeError):
    """Another live process writes this run dir; the message names it and what to do."""


def _owner(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / OWNER_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _busy(run_dir: Path) -> RunDirBusy:
    who = _owner(run_dir)
    job = who.get("job")
    holder = f"job {job}" if job is not None else "another slas process"
    where = f" (pid {who['pid']} on {who.get('host', '?')})" if "pid" in who else ""
    fix = f"slas jobs cancel {job}, wait for it" if job is not None else "wait for it"
    return RunDirBusy(f"run dir {run_dir} is in use by {holder}{where}: {fix}, or set another run.name")


def hold_run_dir(run_dir: str | Path, *, job_id: int | None = None) -> None:
    """Take ``run_dir`` for this process (or raise :class:`RunDirBusy`), and record who holds it."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key not in _HELD:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(run_dir / LOCK_NAME)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise _busy(run_dir) from None
        _HELD[key] = lock
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "job": job_id, "since": time.time()}
    (run_dir / OWNER_NAME).write_text(json.dumps(owner))


def release_run_dir(run_dir: str | Path) -> None:
    """Let ``run_dir`` go (a no-op when this process does not hold it)."""
    run_dir = Path(run_dir)
    lock = _HELD.pop(run_dir.resolve(), None)
    if lock is not None:
        (run_dir / OWNER_NAME).unlink(missing_ok=True)
        lock.release()
