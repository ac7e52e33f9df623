"""Where the MLflow store is, by one rule, and the lock that guards a fresh local store's first open.

``MLFLOW_TRACKING_URI`` wins; otherwise the store is SQLite in ``$SLAS_HOME`` (:func:`slas.paths.slas_home`),
beside the job store, so ``slas train``, jobs started from another folder and ``slas ui`` all find it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from slas.paths import slas_home


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store ``<SLAS_HOME or ./.slas>/mlflow.db``.

    MLflow 3 refuses the plain ``./mlruns`` file store, so the local default is SQLite.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{slas_home() / 'mlflow.db'}"


def local_artifact_root(tracking_uri: str) -> Path | None:
    """Where a database-backed store keeps artifacts: beside a SQLite file, else ``<SLAS_HOME>/mlartifacts``.

    ``None`` for a tracking server, which picks (and may proxy) its own artifact store.
    """
    scheme = tracking_uri.split(":", 1)[0].lower()
    if scheme in ("http", "https", "databricks", "databricks-uc", "uc"):
        return None
    if scheme == "sqlite" and tracking_uri.startswith("sqlite:///") and ":memory:" not in tracking_uri:
        return Path(tracking_uri[len("sqlite:///") :]).resolve().parent / "mlartifacts"
    return slas_home() / "mlartifacts"


def first_open_lock(tracking_uri: str) -> contextlib.AbstractContextManager[Any]:
    """Serialise first contact with a local SQLite store: MLflow creates its tables on first use without a
    lock, so two jobs starting at once on a fresh store would race to create them."""
    if not tracking_uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    return FileLock(f"{Path(tracking_uri.removeprefix('sqlite:///'))}.init.lock")
