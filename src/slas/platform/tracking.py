"""The tracker interface the trainer logs through, and its JSONL implementation in the run dir."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path) -> None: ...

    def close(self) -> None: ...


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

    def log_params(self, params: dict[str, Any]) -> None:
        (self.run_dir / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True, default=str))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step in self._logged:
            return
        rec = {"step": int(step), "time": time.time()}
        rec.update({k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()})
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        self._logged.add(int(step))

    def log_artifact(self, path: str | Path) -> None:
        dest = self.run_dir / "artifacts"
        dest.mkdir(exist_ok=True)
        src = Path(path)
        if src.resolve().parent != dest.resolve():
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / src.name)

    def close(self) -> None:
        self._fh.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
