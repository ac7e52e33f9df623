"""Atomic checkpoints: written into a temporary directory, fsynced, marked complete, then renamed.

A directory without the ``COMPLETE`` marker (a crash mid-write) is never taken as the latest.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER = "COMPLETE"
_NAME = re.compile(r"^iter_(\d{6,})$")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())


def write_directory(dest: str | Path, write: Callable[[Path], None]) -> Path:
    """Publish a directory atomically: ``write(tmpdir)`` into a hidden temp sibling, fsync, then rename
    over ``dest`` in one step.

    A crash leaves either the old ``dest`` or the new one, never a half-written one (the temp sibling,
    ``.tmp-<name>-*``, is removed on any error).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        write(tmp)
        _fsync_tree(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def save_checkpoint(root: str | Path, iteration: int, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmpdir)``, add the ``COMPLETE`` marker, then publish it as ``root/iter_XXXXXX`` in one rename."""

    def write_marked(tmp: Path) -> None:
        write(tmp)
        (tmp / MARKER).write_text(str(iteration))

    return write_directory(Path(root) / f"iter_{iteration:06d}", write_marked)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None
