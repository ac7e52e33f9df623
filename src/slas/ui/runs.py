"""The review UI's run view: training curves of several runs overlaid, rollout grids over steps, the config
difference of two runs, and links to MLflow.

Curves come from the run's MLflow run (the job row's ``mlflow_run_id``, on ``MLFLOW_TRACKING_URI`` or the
local default store); a run MLflow cannot answer for (never tracked there, server down) falls back to its
``metrics.jsonl``, which every run writes, and the view says which source it read. Rollout grids are the
trainer's ``images/<key>/step_N.png`` in the run's own folder, read through :mod:`slas.ui.imagefiles` (a
run folder is the only root they may come from).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from slas.config import flatten
from slas.errors import one_line
from slas.platform.db import Store
from slas.platform.schema import Job
from slas.platform.tracking.jsonl import read_metrics
from slas.platform.tracking.mlflow_store import default_tracking_uri
from slas.ui.imagefiles import checked_path, load_checked

PREFERRED = ("reward/mean", "eval/geneval/overall", "judge/mean")  # shown first when a run has them
_STEP_FILE = re.compile(r"^step_(\d+)\.png$")


@dataclass
class RunCurves:
    """One run's metric histories: ``{key: [(step, value), ...]}``, and where they were read from."""

    job: Job
    source: str
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    mlflow_url: str | None = None


def run_choices(store: Store) -> list[tuple[str, int]]:
    """``(label, job id)`` per job, newest first."""
    return [(f"#{j.id} {j.name} ({j.status})", j.id) for j in store.list_jobs()]


def _from_jsonl(job: Job) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for rec in read_metrics(Path(job.run_dir) / "metrics.jsonl"):
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        for key, value in rec.items():
            if key in ("step", "time") or not isinstance(value, int | float) or not math.isfinite(value):
                continue
            series.setdefault(key, []).append((step, float(value)))
    return series


def mlflow_ui_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI when the tracking URI is a server's address (else ``None``)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _from_mlflow(job: Job, tracking_uri: str, ui_url: str | None) -> tuple[dict[str, list[tuple[int, float]]], str | None]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(str(job.mlflow_run_id))
    series = {}
    for key in sorted(run.data.metrics):
        points = sorted((int(m.step), float(m.value)) for m in client.get_metric_history(run.info.run_id, key))
        series[key] = [(s, v) for s, v in points if math.isfinite(v)]
    return series, mlflow_ui_url(ui_url or tracking_uri, run.info.experiment_id, run.info.run_id)


def run_curves(store: Store, job_id: int, *, tracking_uri: str | None = None, ui_url: str | None = None) -> RunCurves:
    """The job's metric histories, from MLflow when it can answer, else from ``metrics.jsonl``.

    ``ui_url``: the MLflow UI's address as a browser reaches it, when it is not the tracking URI (a server
    tracked through an in-cluster name, or a SQLite store served by ``mlflow ui``)."""
    job = store.get_job(int(job_id))
    uri = tracking_uri or default_tracking_uri()
    if job.mlflow_run_id:
        try:
            series, url = _from_mlflow(job, uri, ui_url)
            return RunCurves(job, "mlflow", series, url)
        except Exception as exc:  # any MLflow failure: the run's own file still has the numbers
            reason = one_line(exc, with_type=True)
            return RunCurves(job, f"metrics.jsonl (MLflow: {reason})", _from_jsonl(job))
    return RunCurves(job, "metrics.jsonl (no MLflow run)", _from_jsonl(job))


def metric_keys(runs: Sequence[RunCurves]) -> list[str]:
    """Keys any of ``runs`` logged, the usual headline ones first."""
    keys = sorted({k for r in runs for k in r.series})
    return [k for k in PREFERRED if k in keys] + [k for k in keys if k not in PREFERRED]


def curves_figure(runs: Sequence[RunCurves], keys: Sequence[str]) -> Any:
    """A matplotlib figure: one panel per metric, every run overlaid (label ``#id name``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(keys)[:6] or ["(no metric)"]
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for r in runs:
            points = r.series.get(key, [])
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None,
                        label=f"#{r.job.id} {r.job.name}")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def grid_keys(job: Job) -> list[str]:
    """The sample-grid keys the run saved (folders under ``images/``)."""
    root = Path(job.run_dir) / "images"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def rollout_grids(job: Job, key: str | None = None, limit: int = 24) -> list[tuple[Image.Image, str]]:
    """The run's sample grids over training steps (evenly thinned to ``limit``), each captioned with its
    step; only files inside the run's own folder are read."""
    keys = grid_keys(job)
    if not keys:
        return []
    key = key if key in keys else keys[0]
    run_root = Path(job.run_dir).resolve()
    files = []
    for p in (run_root / "images" / key).iterdir():
        m = _STEP_FILE.match(p.name)
        if m:
            files.append((int(m.group(1)), p))
    files.sort()
    if len(files) > limit:
        picks = sorted({round(i * (len(files) - 1) / (limit - 1)) for i in range(limit)})
        files = [files[i] for i in picks]
    return [(load_checked(checked_path(p, [run_root]), [run_root]), f"{key} · step {step}") for step, p in files]


def config_diff(a: Job, b: Job) -> list[list[str]]:
    """``[key, value in a, value in b]`` for every flattened config key the two runs set differently."""
    fa, fb = flatten(a.config or {}), flatten(b.config or {})
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, "(unset)"), fb.get(key, "(unset)")
        if va != vb:
            rows.append([key, str(va), str(vb)])
    return rows


__all__ = [
    "RunCurves", "config_diff", "curves_figure", "grid_keys", "metric_keys", "mlflow_ui_url",
    "rollout_grids", "run_choices", "run_curves",
]
