"""An exclusive advisory file lock between processes on one machine (first-time database set-up)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold ``flock(LOCK_EX)`` on ``path`` (created if absent); without ``fcntl`` (not POSIX) it does nothing."""
    try:
        import fcntl
    except ImportError:  # no concurrent first opens to guard against in practice there
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
