"""The MLflow calls behind one tracked run: its experiment, what a reopened run already holds, and each kind
of tracking record carried out against the store.

These are plain functions of an ``MlflowClient`` and a run id, so the tracker's guarded path
(:class:`~slas.platform.tracking.mlflow_client.MLflowTracker`) decides only *whether* to call them.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slas.credentials import redact_text

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

# MLflow's own limits (mlflow.utils.validation); copied so importing this module stays cheap.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-./ ]")
_IMAGE_FILE = re.compile(r"^(.+?)[+%]step[+%](\d+)[+%]timestamp[+%]")


def clean_key(key: str) -> str:
    """A metric, param or image key MLflow accepts: bad characters as ``_``, cut to its length limit."""
    return KEY_BAD_CHARS.sub("_", str(key))[:MAX_KEY_LENGTH]


def param_value(value: Any) -> str:
    """A param as MLflow stores it: a string (JSON for others), credentials masked, cut to MLflow's limit."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return redact_text(text)[:MAX_PARAM_VALUE_LENGTH]


def experiment_id(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The id of experiment ``name``, created (artifacts under ``artifact_root``) when it does not exist."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root.as_uri() if artifact_root is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:  # another process created it between our two calls
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise exc from None
        return exp.experiment_id


def metric_steps(client: MlflowClient, run: Run) -> dict[str, int]:
    """The last step of each metric ``run`` holds."""
    last: dict[str, int] = {}
    for key in run.data.metrics:
        history = client.get_metric_history(run.info.run_id, key)
        if history:
            last[key] = max(m.step for m in history)
    return last


def image_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step of each step image the run holds, read from MLflow's file names
    (``images/<key with / as ~>+step+<N>+timestamp+...``; older MLflow used ``%``)."""
    last: dict[str, int] = {}
    for item in client.list_artifacts(run_id, "images"):
        m = _IMAGE_FILE.match(Path(item.path).name)
        if m:
            key = m.group(1).replace("~", "/").replace("#", "/")
            last[key] = max(int(m.group(2)), last.get(key, -1))
    return last


def send_params(client: MlflowClient, run_id: str, params: Mapping[str, str], logged: dict[str, str]) -> None:
    """Log the params not in ``logged`` (the run's, updated as batches go out).

    MLflow forbids changing a param within a run, so a changed value keeps the logged one, with a warning.
    """
    from mlflow.entities import Param

    fresh, changed = [], []
    for key, value in params.items():
        old = logged.get(key)
        if old is None:
            fresh.append(Param(key, value))
        elif old != value:
            changed.append(key)
    for i in range(0, len(fresh), MAX_PARAMS_PER_BATCH):
        chunk = fresh[i : i + MAX_PARAMS_PER_BATCH]
        client.log_batch(run_id, params=chunk)
        logged.update({p.key: p.value for p in chunk})
    if changed:
        warnings.warn(
            f"MLflow params cannot change within a run; kept the logged values of {', '.join(changed[:5])}"
            + (f" and {len(changed) - 5} more" if len(changed) > 5 else ""),
            RuntimeWarning,
            stacklevel=7,
        )


def send_metrics(client: MlflowClient, run_id: str, record: Mapping[str, Any], server_last: Mapping[str, int]) -> None:
    """Log a step's metrics, except those the store already held for that step when the tracker attached."""
    from mlflow.entities import Metric

    step, ts = record["step"], record["timestamp"]
    metrics = [Metric(k, v, ts, step) for k, v in record["values"].items() if step > server_last.get(k, -1)]
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])


def send_image(client: MlflowClient, run_id: str, record: Mapping[str, Any], image: Any) -> None:
    """Log a step image: ``image`` when sent live, else the file the offline buffer saved."""
    if image is None:
        from PIL import Image

        with Image.open(record["file"]) as img:
            image = img.copy()
    client.log_image(run_id, image, key=record["key"], step=record["step"], timestamp=record["timestamp"])


def send_artifact(client: MlflowClient, run_id: str, record: Mapping[str, Any]) -> None:
    """Upload the record's file or folder (a path removed meanwhile is an error the tracker drops)."""
    src = Path(record["path"])
    if not src.exists():
        raise FileNotFoundError(f"artifact {src} was removed before it could be uploaded")
    if src.is_dir():
        client.log_artifacts(run_id, str(src), record["artifact_path"] or None)
    else:
        client.log_artifact(run_id, str(src), record["artifact_path"] or None)
