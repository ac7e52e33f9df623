"""Checks that run before any heavy work: every model, prompt file and reward named by a config exists.

Nothing here downloads. A missing model gives the exact command to fetch it on a connected machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from slas.config import SLASConfig


class PreflightError(RuntimeError):
    """Something a run needs is not on this machine; the message names it and how to get it."""


def fetch_command(repo_id: str, revision: str | None = None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return f"hf download {repo_id}{rev}"


def resolve_model_path(path_or_id: str, revision: str | None = None, *, key: str = "model.path") -> str:
    """A local diffusers directory, or the cached snapshot of a hub id; never downloads."""
    p = Path(path_or_id).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "model_index.json").is_file():
            raise PreflightError(f"{key}: {p} is not a diffusers pipeline directory (no model_index.json)")
        return str(p)
    looks_like_id = path_or_id.count("/") == 1 and not path_or_id.startswith((".", "/", "~"))
    if not looks_like_id:
        raise PreflightError(f"{key}: directory {p} does not exist")
    try:
        snap = snapshot_download(path_or_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        snap = None
    if snap is None or not (Path(snap) / "model_index.json").is_file():
        raise PreflightError(
            f"{key}: {path_or_id!r} is neither a local directory nor in the Hugging Face cache "
            f"({os.environ.get('HF_HUB_CACHE', constants.HF_HUB_CACHE)}); on a connected machine run: "
            f"{fetch_command(path_or_id, revision)}  (then copy the cache here, or set {key} to the downloaded dir)"
        )
    return snap


def preflight(config: SLASConfig) -> None:
    """Raise :class:`PreflightError` naming the first thing the run needs that is missing."""
    from slas.rewards import registry

    resolve_model_path(config.model.path, config.model.revision)
    if not Path(config.data.prompts).is_file():
        raise PreflightError(f"data.prompts: prompt file not found: {config.data.prompts}")
    known = registry.available()
    for i, comp in enumerate(config.reward.components):
        if comp.name not in known:
            raise PreflightError(f"reward.components.{i}.name: unknown reward {comp.name!r}; available: {known}")
        registry.preflight(comp.name, comp.options)
