"""The model registry: a checkpoint becomes a new version of a registered model, and ``best`` follows the score.

A registration is a tracking record like any other (so it waits in the offline buffer during an outage);
:func:`model_record` builds it and :func:`create_version` carries it out. Whether the new version takes
the ``best`` alias is decided when the version is created, against the registry as it is then, so a
registration replayed after an outage still compares against the current ``best``.

A score is only compared with a score of the same metric (the version tag :data:`SCORE_METRIC_TAG`): the
training reward and a held-out evaluation are different scales, and the reward is the number the policy
was pushed to raise, gamed or not. So a version scored by a held-out evaluation (``eval/...``) takes
``best`` from one scored by anything else, and is never displaced by one; scores of two different
metrics of the same kind are not compared at all (``best`` stays).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from slas.platform.tracking.outage import is_outage

if TYPE_CHECKING:
    from mlflow import MlflowClient

SCORE_TAG = "slas.score"  # model-version tag compared to decide which version gets the ``best`` alias
SCORE_METRIC_TAG = "slas.score_metric"  # which metric the score is (reward/total/mean, eval/geneval/overall)
HELD_OUT_PREFIX = "eval/"  # metrics of held-out evaluations, the ones model selection trusts most


def model_record(
    name: str,
    artifact_path: str,
    aliases: Sequence[str],
    best: bool,
    tags: Mapping[str, str] | None,
    score: float | None,
) -> dict[str, Any]:
    """The ``model`` record registering the run's ``artifact_path`` as a version of ``name``.

    ``latest`` is dropped from ``aliases``: MLflow reserves it and always resolves it to the newest version.
    A finite ``score`` is kept as the version tag :data:`SCORE_TAG`.
    """
    wanted = [a for a in aliases if a.lower() != "latest"] + (["best"] if best else [])
    finite = float(score) if score is not None and math.isfinite(float(score)) else None
    tag_values = {k: str(v) for k, v in (tags or {}).items()}
    if finite is not None:
        tag_values[SCORE_TAG] = repr(finite)
    return {
        "kind": "model",
        "name": name,
        "artifact_path": artifact_path,
        "aliases": list(dict.fromkeys(wanted)),
        "tags": tag_values,
        "score": finite,
    }


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create the registered model ``name`` unless it exists (or another process creates it meanwhile)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if is_outage(exc):
            raise
        try:
            client.create_registered_model(name)
        except MlflowException as again:  # created concurrently
            if is_outage(again):
                raise


def create_version(client: MlflowClient, run_id: str, record: Mapping[str, Any]) -> int:
    """Carry out a :func:`model_record`: a new version from the run's artifact, its aliases set; its number."""
    name = record["name"]
    _ensure_registered_model(client, name)
    source = f"runs:/{run_id}/{record['artifact_path']}"
    aliases = list(record["aliases"])
    score = record.get("score")
    metric = (record.get("tags") or {}).get(SCORE_METRIC_TAG)
    if score is not None and "best" not in aliases and beats_best(client, name, float(score), metric):
        aliases.append("best")
    version = client.create_model_version(
        name, source, run_id=run_id, tags=record["tags"] or None, await_creation_for=0
    )
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    return int(version.version)


def held_out(metric: str | None) -> bool:
    """Whether a score metric is a held-out evaluation's (``eval/<benchmark>/overall``)."""
    return metric is not None and metric.startswith(HELD_OUT_PREFIX)


def beats_best(client: MlflowClient, name: str, score: float, metric: str | None = None) -> bool:
    """True when no version of ``name`` has the ``best`` alias; else, when both scores are of the same
    metric (``slas.score_metric``, or neither says), when the ``best`` one's ``slas.score`` is lower (or
    absent); else when this score is a held-out evaluation's and the ``best`` one's is not."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, "best")
    except MlflowException as exc:
        if is_outage(exc):
            raise
        return True  # no version has the alias yet
    tags = current.tags or {}
    old_metric = tags.get(SCORE_METRIC_TAG)
    if old_metric != metric:
        return held_out(metric) and not held_out(old_metric)
    old = tags.get(SCORE_TAG)
    try:
        return old is None or not score <= float(old)  # a NaN or unreadable old score loses too
    except ValueError:
        return True
