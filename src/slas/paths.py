"""Where slas keeps things, by one rule.

``SLAS_HOME`` (default: ``./.slas`` in the current folder) holds the state: the job store ``slas.db``, the
MLflow store ``mlflow.db`` with ``mlartifacts/``, and sample sets ``samples/``. Outputs whose folder is not
given explicitly (training runs, ``slas demo``, ``slas bench``) go to ``./runs``, or to ``$SLAS_HOME/runs``
when ``SLAS_HOME`` is set; so setting ``SLAS_HOME`` moves everything, and an explicit path is taken as given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

HOME_ENV = "SLAS_HOME"
SHAPES_ENV = "SLAS_SHAPES_ASSETS"
_SHAPES_REF = re.compile(r"^(local-dir:)?shapes:(.*)$")


def slas_home() -> Path:
    """The state folder: ``$SLAS_HOME``, else ``./.slas`` (absolute)."""
    return Path(os.environ.get(HOME_ENV) or ".slas").expanduser().resolve()


def runs_root() -> Path:
    """The default folder of run outputs: ``$SLAS_HOME/runs`` when ``SLAS_HOME`` is set, else ``runs``."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser().resolve() / "runs" if home else Path("runs")


def shapes_assets_dir() -> Path:
    """The shapes world's trained models: ``$SLAS_SHAPES_ASSETS``, else the folder shipped in the package."""
    env = os.environ.get(SHAPES_ENV)
    return Path(env) if env else Path(__file__).resolve().parent / "shapes" / "assets"


def expand_shapes_refs(value: Any) -> Any:
    """``value`` with every string ``shapes:<rel>`` (or ``local-dir:shapes:<rel>``) made a path under
    :func:`shapes_assets_dir`, in nested dicts and lists too: configs name the shipped world portably."""
    if isinstance(value, dict):
        return {k: expand_shapes_refs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_shapes_refs(v) for v in value]
    if isinstance(value, str) and (m := _SHAPES_REF.match(value)):
        return f"{m.group(1) or ''}{shapes_assets_dir() / m.group(2)}"
    return value


WHERE_THINGS_GO = (
    "Where things go: the job store, MLflow and sample sets live in $SLAS_HOME (default ./.slas); "
    "runs, demo and bench outputs go to ./runs, or $SLAS_HOME/runs when SLAS_HOME is set; "
    "a folder given explicitly is used as given."
)
