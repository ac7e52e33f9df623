"""Where slas keeps things, by one rule.

``SLAS_HOME`` (default: ``./.slas`` in the current folder) holds the state: the job store ``slas.db``, the
MLflow store ``mlflow.db`` with ``mlartifacts/``, and sample sets ``samples/``. Outputs whose folder is not
given explicitly (training runs, ``slas demo``, ``slas bench``) go to ``./runs``, or to ``$SLAS_HOME/runs``
when ``SLAS_HOME`` is set; so setting ``SLAS_HOME`` moves everything, and an explicit path is taken as given.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "SLAS_HOME"


def slas_home() -> Path:
    """The state folder: ``$SLAS_HOME``, else ``./.slas`` (absolute)."""
    return Path(os.environ.get(HOME_ENV) or ".slas").expanduser().resolve()


def runs_root() -> Path:
    """The default folder of run outputs: ``$SLAS_HOME/runs`` when ``SLAS_HOME`` is set, else ``runs``."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser().resolve() / "runs" if home else Path("runs")


WHERE_THINGS_GO = (
    "Where things go: the job store, MLflow and sample sets live in $SLAS_HOME (default ./.slas); "
    "runs, demo and bench outputs go to ./runs, or $SLAS_HOME/runs when SLAS_HOME is set; "
    "a folder given explicitly is used as given."
)
