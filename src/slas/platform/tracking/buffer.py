"""The offline buffer: tracking records the MLflow store could not take yet, kept in order in the run dir.

Records are appended (and fsynced) one JSON line each to ``mlflow_buffer.jsonl``; an image goes to
``mlflow_buffer/`` beside it and its record names the file. The buffer lives in the run dir, so a run
that ends during an outage leaves it there, and the next tracker opened on that run dir replays it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slas.credentials import redact_text
from slas.errors import one_line
from slas.platform.tracking.jsonl import safe_name
from slas.platform.tracking.outage import is_outage, server_answered


class RecordBuffer:
    """Unsent tracking records of one run dir, oldest first; :attr:`count` is how many wait."""

    def __init__(self, path: Path, files: Path) -> None:
        self.path = path
        self.files = files
        self.count = self._count()

    def _count(self) -> int:
        if not self.path.is_file():
            return 0
        return sum(1 for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip())

    def append(self, record: dict[str, Any], image: Any = None) -> None:
        """Add ``record`` at the end, durably (an image record's PIL ``image`` is saved beside the buffer)."""
        if record["kind"] == "image" and image is not None:
            self.files.mkdir(parents=True, exist_ok=True)
            name = f"{safe_name(record['key'])}_step{record['step']:06d}_{uuid.uuid4().hex[:8]}.png"
            image.save(self.files / name)
            record = {**record, "file": str(self.files / name)}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.count += 1

    def read(self) -> list[dict[str, Any]]:
        """The buffered records; a last line cut short by a crash mid-write is skipped."""
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
        return records

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the buffer by ``records`` (atomically); none left removes the file and the image folder."""
        if not records:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.files, ignore_errors=True)
        else:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            os.replace(tmp, self.path)
        self.count = len(records)

    def replay(self, send: Callable[[dict[str, Any]], Any], *, max_tries: int) -> None:
        """``send`` each record, oldest first; on a new outage keep the unsent rest and re-raise it.

        A record the server keeps answering with an error (5xx) is dropped after ``max_tries`` answered
        failures, and one failing for any other reason at once: either would block the buffer forever.
        """
        if not self.count:
            return
        records = self.read()
        for i, record in enumerate(records):
            try:
                send(record)
            except Exception as exc:
                if is_outage(exc):
                    record["tries"] = record.get("tries", 0) + int(server_answered(exc))
                    if record["tries"] < max_tries:
                        self.rewrite(records[i:])
                        raise
                warnings.warn(
                    f"dropped buffered {record.get('kind')} record: {redact_text(one_line(exc))}", RuntimeWarning, stacklevel=5
                )
            if record.get("file"):
                Path(record["file"]).unlink(missing_ok=True)
        self.rewrite([])
