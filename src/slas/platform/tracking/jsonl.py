"""The tracker every run has: ``params.json``, ``metrics.jsonl`` and images in the run dir.

It needs no server, so a run whose MLflow store is away (or switched off) still leaves a complete record,
and ``slas demo``, the bench and the tests read their numbers back from it with :func:`read_metrics`.

A process killed mid-write leaves a torn last line: readers skip it (with a warning), and a tracker
opening the file for a resumed run cuts it off first, so the next line does not land glued to it. A
line that does not parse anywhere else is damage no crash makes: an error naming the file and line.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slas.credentials import redact_text
from slas.errors import SlasError
from slas.images import to_pil


class MetricsFileDamaged(SlasError, ValueError):
    """A ``metrics.jsonl`` line before the last one is not a JSON record; the message names file and line."""


def safe_name(key: str) -> str:
    """``key`` as one file-name component: anything but letters, digits, ``_.-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "image"


class JsonlTracker:
    """``params.json``, one ``metrics.jsonl`` line per step and an ``artifacts/`` folder in ``run_dir``.

    Resuming appends; a line for a step already logged is dropped, so a resumed run never duplicates steps.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        repair_torn_tail(self.metrics_path)
        self._logged = {rec["step"] for rec in read_metrics(self.metrics_path)}
        self._fh = self.metrics_path.open("a", encoding="utf-8")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Write ``params.json``; credentials in any value (a URL with a password) are masked."""
        text = json.dumps(dict(params), indent=2, sort_keys=True, default=str)
        (self.run_dir / "params.json").write_text(redact_text(text))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Append one line for ``step`` (non-finite values as ``null``); a step already in the file is skipped."""
        if step in self._logged:
            return
        rec = {"step": int(step), "time": time.time()}
        rec.update({k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()})
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        self._logged.add(int(step))

    def log_artifact(self, path: str | Path) -> None:
        """Copy a file or folder into ``artifacts/`` (not when it already lies there)."""
        dest = self.run_dir / "artifacts"
        dest.mkdir(exist_ok=True)
        src = Path(path)
        if src.resolve().parent != dest.resolve():
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / src.name)

    def log_image(self, image: Any, key: str, step: int) -> Path:
        """Save a sample grid as ``images/<key>/step_<step>.png`` so offline runs keep them too."""
        path = self.run_dir / "images" / safe_name(key) / f"step_{int(step):06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        to_pil(image).save(path)
        return path

    def close(self, status: str = "FINISHED") -> None:
        """Close ``metrics.jsonl``; the status is MLflow's business, the file needs no end marker."""
        self._fh.close()


def _parse(line: str) -> dict[str, Any] | None:
    """A metrics record, or ``None`` for a line that is not one (torn, or not a JSON object)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of ``path`` with their numbers (bytes a crash left half-written decode as U+FFFD)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in order; ``[]`` when it does not exist.

    An unparseable last line (a crash mid-write) is skipped with a warning; one anywhere else raises
    :class:`MetricsFileDamaged` naming the file and line.
    """
    p = Path(path)
    if not p.is_file():
        return []
    lines = _lines(p)
    records = []
    for i, (n, line) in enumerate(lines):
        record = _parse(line)
        if record is not None:
            records.append(record)
        elif i == len(lines) - 1:
            warnings.warn(f"{p} line {n} was cut short (a crash mid-write?): skipped", RuntimeWarning, stacklevel=2)
        else:
            raise MetricsFileDamaged(
                f"{p} line {n} is not a metrics record: {line.strip()[:60]!r}; fix or delete that line "
                f"(each line is one JSON object)"
            )
    return records


def repair_torn_tail(path: Path) -> bool:
    """Cut off a last line a crash left half-written, so the next appended line starts on a line of its own.

    A complete last record missing only its newline gets the newline. Returns True when the file changed.
    """
    if not path.is_file():
        return False
    data = path.read_bytes()
    start = data.rstrip().rfind(b"\n") + 1  # where the last non-blank line begins
    tail = data[start:].decode("utf-8", errors="replace")
    if not tail.strip():
        return False
    torn = _parse(tail) is None
    if not torn and data.endswith(b"\n"):
        return False
    with path.open("r+b") as fh:
        if torn:
            fh.truncate(start)
        else:
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    if torn:
        line_no = data[:start].count(b"\n") + 1
        warnings.warn(f"{path} line {line_no} was cut short by a crash mid-write: removed it (that step is "
                      f"logged again if training repeats it)", RuntimeWarning, stacklevel=3)
    return True
