"""Checks that run before any heavy work: every model, prompt file and reward named by a config exists.

Nothing here downloads. A missing model gives the exact command to fetch it on a connected machine.
:func:`preflight` runs every check and reports every problem at once, so a newcomer missing the SD
weights, HPS and CLIP learns all three in one round trip instead of three.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from huggingface_hub import constants, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError

from slas.config import RewardConfig, SLASConfig
from slas.errors import SlasError

# Hub owners whose models are gated: a download needs the licence accepted on the model page and a login.
GATED_OWNERS = ("black-forest-labs/",)


class PreflightError(SlasError, RuntimeError):
    """Something a run needs is not on this machine; the message names it and how to get it.

    One line per problem (:attr:`problems`); the first line is the first problem, so a caller that shows
    only ``str(err).splitlines()[0]`` still shows a complete one.
    """

    @classmethod
    def listing(cls, problems: Iterable[str]) -> PreflightError:
        """One error for several problems, one line each."""
        return cls("\n".join(problems))

    @property
    def problems(self) -> list[str]:
        return [line for line in str(self).splitlines() if line.strip()]


def fetch_command(repo_id: str, revision: str | None = None, filename: str | None = None) -> str:
    rev = f" --revision {revision}" if revision else ""
    file = f" {filename}" if filename else ""
    return f"hf download {repo_id}{file}{rev}"


def fetch_steps(repo_id: str, revision: str | None = None, filename: str | None = None) -> str:
    """What to run on a connected machine; a gated model needs its licence accepted and a login first,
    without which ``hf download`` fails with an opaque 401/403."""
    command = fetch_command(repo_id, revision, filename)
    if repo_id.startswith(GATED_OWNERS):
        return (f"accept the licence on https://huggingface.co/{repo_id} (gated model), run `hf auth login`, "
                f"then run: {command}")
    return f"run: {command}"


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
            f"({_cache_dir()}); on a connected machine {fetch_steps(path_or_id, revision)}  "
            f"(then copy the cache here, or set {key} to the downloaded dir)"
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
        f"machine {fetch_steps(path_or_repo, revision, filename)}  (or set {key} to the file's path)"
    )


def _problems(checks: Iterable[Callable[[], object]]) -> list[str]:
    """Run every check; the lines of the :class:`PreflightError` each raised, in order."""
    found: list[str] = []
    for check in checks:
        try:
            check()
        except PreflightError as err:
            found.extend(err.problems)
    return found


def _check_prompts(path: str) -> None:
    if not Path(path).is_file():
        raise PreflightError(f"data.prompts: prompt file not found: {path}")


def _check_reward(i: int, name: str, options: dict) -> None:
    """Component ``i`` is a registered reward whose own preflight passes."""
    from slas.rewards import registry

    known = registry.available()
    if name not in known:
        raise PreflightError(f"reward.components.{i}.name: unknown reward {name!r}; available: {known}")
    registry.preflight(name, options)


def _reward_checks(reward: RewardConfig) -> list[Callable[[], None]]:
    return [partial(_check_reward, i, c.name, c.options) for i, c in enumerate(reward.components)]


def _raise_if_any(problems: list[str]) -> None:
    if problems:
        raise PreflightError.listing(problems)


def preflight(config: SLASConfig) -> None:
    """Raise one :class:`PreflightError` listing everything the run needs that is missing (model, prompt
    file, every reward), one problem per line in that order."""
    checks = [partial(resolve_model_path, config.model.path, config.model.revision),
              partial(_check_prompts, config.data.prompts), *_reward_checks(config.reward)]
    _raise_if_any(_problems(checks))


def preflight_reward(reward: RewardConfig) -> None:
    """Every component is a registered reward whose files are here (each reward's own check); one
    :class:`PreflightError` lists every component that is not."""
    _raise_if_any(_problems(_reward_checks(reward)))
