"""The run's tracker as the trainer sees it: ``metrics.jsonl`` and MLflow behind one :class:`Tracker`.

:func:`make_tracker` decides whether MLflow is on (``SLAS_MLFLOW``) and which experiment a run goes to,
so ``slas train``, jobs and the demo all track the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slas.platform.tracking.jsonl import JsonlTracker
from slas.platform.tracking.mlflow_client import MLflowTracker


class TeeTracker:
    """Sends every call to several trackers (``metrics.jsonl`` and MLflow); one failing does not starve the rest.

    Optional calls (``log_artifact``, ``register_model``) go to the trackers that have them.
    """

    def __init__(self, *trackers: Any) -> None:
        self.trackers = [t for t in trackers if t is not None]

    @property
    def run_id(self) -> str | None:
        """The first child's MLflow run id (what the job store records), or ``None``."""
        return next((t.run_id for t in self.trackers if getattr(t, "run_id", None)), None)

    def _fan(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on every child that has it; the first result that is not ``None`` is returned and
        the first error is raised, but only after every child had its call."""
        result, error = None, None
        for tracker in self.trackers:
            fn = getattr(tracker, method, None)
            if fn is None:
                continue
            try:
                out = fn(*args, **kwargs)
                result = out if result is None else result
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
        return result

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._fan("log_params", params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._fan("log_metrics", metrics, step=step)

    def log_artifact(self, path: str | Path) -> None:
        self._fan("log_artifact", path)

    def log_image(self, image: Any, key: str, step: int) -> None:
        self._fan("log_image", image, key=key, step=step)

    def register_model(
        self,
        name: str,
        path: str | Path,
        aliases: Sequence[str] = ("latest",),
        best: bool = False,
        tags: Mapping[str, str] | None = None,
        score: float | None = None,
    ) -> int | None:
        """See :meth:`MLflowTracker.register_model`; ``None`` when no child registers models."""
        return self._fan("register_model", name, path, aliases=aliases, best=best, tags=tags, score=score)

    def close(self, status: str = "FINISHED") -> None:
        self._fan("close", status=status)


def mlflow_enabled() -> bool:
    """MLflow tracking is on unless ``SLAS_MLFLOW`` is ``0``/``false``/``off`` (JSONL only)."""
    return os.environ.get("SLAS_MLFLOW", "1").strip().lower() not in ("0", "false", "off", "no")


def make_tracker(
    run_dir: str | Path,
    *,
    params: Mapping[str, Any] | None,
    run_name: str | None,
    run_id: str | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    mlflow: bool | None = None,
    **mlflow_options: Any,
) -> TeeTracker:
    """The run's tracker: ``metrics.jsonl`` in ``run_dir`` plus MLflow, with ``params`` already logged.

    ``run_id`` reopens an MLflow run (resume); ``tee.run_id`` is the id for the job store. The experiment
    is ``experiment``, else ``MLFLOW_EXPERIMENT_NAME``, else ``slas``. ``mlflow=None`` follows ``SLAS_MLFLOW``;
    ``mlflow_options`` go to :class:`MLflowTracker` (``retry_interval``, ``http_timeout``, ``tags``, ...).
    """
    trackers: list[Any] = [JsonlTracker(run_dir)]
    if mlflow if mlflow is not None else mlflow_enabled():
        trackers.append(
            MLflowTracker(
                run_dir,
                experiment=experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "slas",
                run_name=run_name,
                run_id=run_id,
                tracking_uri=tracking_uri,
                **mlflow_options,
            )
        )
    tee = TeeTracker(*trackers)
    if params:
        tee.log_params(dict(params))
    return tee
