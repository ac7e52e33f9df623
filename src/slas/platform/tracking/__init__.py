"""Trackers the trainer logs through: JSONL in the run dir, MLflow, and a tee that feeds both.

The trainer only calls the :class:`~slas.rl.protocols.Tracker` protocol, so a run with no tracking server
still leaves a complete ``metrics.jsonl``. :class:`MLflowTracker` adds the MLflow view (params, step
metrics, sample grids, checkpoints, registered models) and never stops a run because the server went
away: what it cannot send is buffered in the run dir and replayed, in order, once the server answers again.

Modules: :mod:`.jsonl` (``metrics.jsonl``), :mod:`.mlflow_client` (the MLflow tracker and its guarded
path), :mod:`.mlflow_store` (where the store is), :mod:`.mlflow_run` (the MLflow calls of one run),
:mod:`.registry` (model versions and the ``best`` alias), :mod:`.buffer` (the offline buffer),
:mod:`.outage` (outage or rejection) and :mod:`.tee` (the run's tracker, :func:`make_tracker`).
"""

from __future__ import annotations

from slas.platform.tracking.jsonl import JsonlTracker, read_metrics
from slas.platform.tracking.mlflow_client import MLflowTracker
from slas.platform.tracking.mlflow_store import default_tracking_uri
from slas.platform.tracking.outage import TrackingError, TrackingServerUnavailable
from slas.platform.tracking.registry import SCORE_TAG
from slas.platform.tracking.tee import TeeTracker, make_tracker, mlflow_enabled
from slas.rl.protocols import Tracker

__all__ = [
    "SCORE_TAG",
    "JsonlTracker",
    "MLflowTracker",
    "TeeTracker",
    "Tracker",
    "TrackingError",
    "TrackingServerUnavailable",
    "default_tracking_uri",
    "make_tracker",
    "mlflow_enabled",
    "read_metrics",
]
