"""Atomic checkpoints: written into a temporary directory, fsynced, marked complete, then renamed.

A directory without the ``COMPLETE`` marker (a crash mid-write) is never taken as the latest. Each
checkpoint also holds ``MANIFEST.json``, the size and SHA-256 of every file in it, so damage after the
fact (a truncated or altered file) is found before anything is loaded from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from slas.errors import SlasError

MARKER = "COMPLETE"
MANIFEST = "MANIFEST.json"
_NAME = re.compile(r"^iter_(\d{6,})$")
_ORPHAN = re.compile(r"^\.tmp-iter_\d{6,}-")


class CheckpointDamaged(SlasError, OSError):
    """A checkpoint file is missing, truncated or altered since it was written; the message names it."""


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
        write_manifest(tmp)
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _payload_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in (MANIFEST, MARKER))


def write_manifest(root: str | Path) -> None:
    """``MANIFEST.json``: size and SHA-256 of every file under ``root`` (paths relative to it)."""
    root = Path(root)
    files = {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in _payload_files(root)}
    (root / MANIFEST).write_text(json.dumps({"version": 1, "files": files}, indent=1))


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CheckpointDamaged` naming the first file that does not match the manifest.

    A checkpoint without a manifest (written before manifests existed) passes; its files are still read
    only as tensors and JSON.
    """
    path = Path(path)
    if not (path / MARKER).is_file():
        raise CheckpointDamaged(f"{path}: not a complete checkpoint (no {MARKER} marker)")
    manifest = path / MANIFEST
    if not manifest.is_file():
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointDamaged(f"{manifest}: unreadable manifest ({type(exc).__name__})") from None
    for rel, want in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointDamaged(f"{f}: missing")
        size = f.stat().st_size
        if size != want["size"]:
            raise CheckpointDamaged(f"{f}: {size} bytes, {want['size']} when written (truncated or replaced)")
        if _sha256(f) != want["sha256"]:
            raise CheckpointDamaged(f"{f}: content differs from when it was written (SHA-256 mismatch)")


def remove_orphans(root: str | Path) -> list[Path]:
    """Remove ``.tmp-iter_*`` folders a crash mid-checkpoint left under ``root``; returns what was removed.

    Only safe while no other process writes checkpoints there (the run dir's lock guarantees it).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    orphans = [p for p in root.iterdir() if p.is_dir() and _ORPHAN.match(p.name)]
    for p in orphans:
        shutil.rmtree(p, ignore_errors=True)
    return orphans
