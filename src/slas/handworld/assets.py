"""Where the product-in-hand world's trained models live (shipped inside the package) and how to find them.

``assets_dir()/kontext`` is a diffusers ``FluxKontextPipeline`` directory (the tiny edit model; load it with
``model.family: flux_kontext`` and the sample settings of :data:`slas.handworld.models.SAMPLE_SETTINGS`),
``pretrain.json`` what :mod:`slas.handworld.pretrain` measured. ``$SLAS_HANDWORLD_ASSETS`` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from slas.errors import SlasError

ENV = "SLAS_HANDWORLD_ASSETS"
EDIT_MODEL = "kontext"
PRETRAIN_REPORT = "pretrain.json"
PRETRAIN_COMMAND = "python -m slas.handworld.pretrain"


class MissingAssets(SlasError, FileNotFoundError):
    """The shipped product-in-hand models are not there; the message names the command that makes them."""


def assets_dir() -> Path:
    """``$SLAS_HANDWORLD_ASSETS``, else the ``assets`` folder inside the installed package."""
    env = os.environ.get(ENV)
    return Path(env) if env else Path(__file__).resolve().parent / "assets"


def edit_model_dir(root: str | Path | None = None) -> Path:
    """The edit model's diffusers directory under ``root`` (default :func:`assets_dir`); one line saying how
    to make it when it is absent."""
    root = Path(root) if root is not None else assets_dir()
    path = root / EDIT_MODEL
    if not (path / "model_index.json").is_file():
        raise MissingAssets(f"product-in-hand edit model missing: {path / 'model_index.json'}; make it with: "
                            f"{PRETRAIN_COMMAND} --out {root}")
    return path
