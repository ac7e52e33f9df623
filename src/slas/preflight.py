"""Checks that run before any heavy work: every model, prompt file and reward named by a config exists.

Nothing here downloads. A missing model gives the exact command to fetch it on a connected machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import constants, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError

from slas.config import RewardConfig, SLASConfig


class PreflightError(RuntimeError):
    """Something a run needs is not on this machine; the message names it and how to get it."""


def fetch_command(repo_id: str, revision: str | None = None, filename: str | None = None) -> str:
    rev = f" --revision {revision}" if revision else ""
    file = f" {filename}" if filename else ""
    return f"hf download {repo_id}{file}{rev}"


def _cache_dir() -> str:
    return os.environ.get("HF_HUB_CACHE", constants.HF_HUB_CACHE)


def looks_like_hub_id(s: str) -> bool:
    """``owner/name``, not a path."""
    return s.count("/") == 1 and not s.startswith((".", "/", "~"))


def resolve_model_path(
    path_or_id: str, revision: str | None = None, *, key: str = "model.path", marker: str = "model_index.json"
) -> str:
    """A local model directory holding ``marker``, or the cached snapshot of a hub id; never downloads."""
    p = Path(path_or_id).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / marker).is_file():
            raise PreflightError(f"{key}: {p} is not a model directory (no {marker})")
        return str(p)
    if not looks_like_hub_id(path_or_id):
        raise PreflightError(f"{key}: directory {p} does not exist")
    try:
        snap = snapshot_download(path_or_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        snap = None
    if snap is None or not (Path(snap) / marker).is_file():
        raise PreflightError(
            f"{key}: {path_or_id!r} is neither a local directory nor in the Hugging Face cache "
            f"({_cache_dir()}); on a connected machine run: "
            f"{fetch_command(path_or_id, revision)}  (then copy the cache here, or set {key} to the downloaded dir)"
        )
    return snap


def resolve_file(path_or_repo: str, filename: str | None = None, *, key: str, revision: str | None = None) -> str:
    """A local file, or ``filename`` of a hub repo already in the cache; never downloads.

    ``path_or_repo`` is either a file path or a repo id (then ``filename`` names the file in it).
    """
    p = Path(path_or_repo).expanduser()
    if p.is_file():
        return str(p)
    if filename is None or not looks_like_hub_id(path_or_repo):
        raise PreflightError(f"{key}: file not found: {p}")
    cached = try_to_load_from_cache(path_or_repo, filename, revision=revision)
    if isinstance(cached, str) and Path(cached).is_file():
        return cached
    raise PreflightError(
        f"{key}: {filename} of {path_or_repo!r} is not in the Hugging Face cache ({_cache_dir()}); on a connected "
        f"machine run: {fetch_command(path_or_repo, revision, filename)}  (or set {key} to the file's path)"
    )


def preflight(config: SLASConfig) -> None:
    """Raise :class:`PreflightError` naming the first thing the run needs that is missing."""
    resolve_model_path(config.model.path, config.model.revision)
    if not Path(config.data.prompts).is_file():
        raise PreflightError(f"data.prompts: prompt file not found: {config.data.prompts}")
    preflight_reward(config.reward)


def preflight_reward(reward: RewardConfig) -> None:
    """Every component is a registered reward whose files are here (each reward's own check)."""
    from slas.rewards import registry

    known = registry.available()
    for i, comp in enumerate(reward.components):
        if comp.name not in known:
            raise PreflightError(f"reward.components.{i}.name: unknown reward {comp.name!r}; available: {known}")
        registry.preflight(comp.name, comp.options)
