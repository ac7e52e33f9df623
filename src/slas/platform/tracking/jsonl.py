"""The tracker every run has: ``params.json``, ``metrics.jsonl`` and images in the run dir.

It needs no server, so a run whose MLflow store is away (or switched off) still leaves a complete record,
and ``slas demo``, the bench and the tests read their numbers back from it with :func:`read_metrics`.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slas.images import to_pil


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
        self._logged = {rec["step"] for rec in read_metrics(self.metrics_path)}
        self._fh = self.metrics_path.open("a", encoding="utf-8")

    def log_params(self, params: Mapping[str, Any]) -> None:
        (self.run_dir / "params.json").write_text(json.dumps(dict(params), indent=2, sort_keys=True, default=str))

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


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in order; ``[]`` when it does not exist."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
