"""Registered rewards and weighted composites.

A reward is a callable ``reward(images, prompts, **conditions) -> dict[str, Tensor]`` (one entry per
component, one value per image; images [N, 3, H, W] in [0, 1]). A registered *factory* builds it from
config options, so weights load once, at build time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from slas.rl.advantages import group_index, group_mean_std


class Reward(Protocol):
    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Reward]
    preflight: Callable[..., None] | None


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, preflight: Callable[..., None] | None = None):
    """Decorator registering a reward factory under ``name``; ``preflight(**options)`` checks its files."""

    def deco(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        _REGISTRY[name] = _Entry(factory, preflight)
        return factory

    return deco


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def available() -> list[str]:
    return sorted(_REGISTRY)


def preflight(name: str, options: Mapping[str, Any]) -> None:
    entry = _REGISTRY[name]
    if entry.preflight is not None:
        entry.preflight(**options)


def group_zscore(values: Tensor, group_ids: Tensor, eps: float = 1e-8) -> Tensor:
    """Z-score ``values`` within each prompt group (NaN-aware; a flat group gives 0, NaN stays NaN).

    The group statistics are the advantages' own (:func:`slas.rl.advantages.group_mean_std`).
    """
    v = values.double()
    valid = torch.isfinite(v)
    inv, num_groups = group_index(group_ids.cpu())
    mean, std = group_mean_std(v, valid, inv, num_groups)
    x = torch.where(valid, v, torch.zeros_like(v))
    z = torch.where(std[inv] > 0, (x - mean[inv]) / (std[inv] + eps), torch.zeros_like(x))
    return torch.where(valid, z, v).to(values.dtype)


class CompositeReward:
    """Weighted sum of component rewards; returns every component (raw) plus ``"total"``.

    ``normalize="group_zscore"`` z-scores each component within its prompt group (``group_ids``
    condition) before weighting, so components on different scales cannot drown each other
    (Flow-GRPO's remedy for rewards that fight); the default is the paper's raw weighted sum.
    """

    def __init__(self, components: list[tuple[str, float | Mapping[str, float], Reward]], normalize: str = "none") -> None:
        if not components:
            raise ValueError("a composite reward needs at least one component")
        if normalize not in ("none", "group_zscore"):
            raise ValueError(f"normalize must be 'none' or 'group_zscore', got {normalize!r}")
        self.components = components
        self.normalize = normalize

    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]:
        return self.combine(self.parts(images, prompts, **conditions), images.shape[0], conditions.get("group_ids"))

    def parts(self, images: Tensor, prompts: list[str], **conditions: Any) -> list[dict[str, Tensor]]:
        """Each component's outputs under its own keys (float CPU ``[N]``), in component order.

        The reward server (:mod:`slas.rewards.serve`) sends these, so a remote component returns exactly
        what the local one would, keys included.
        """
        if self.normalize == "group_zscore" and conditions.get("group_ids") is None:
            raise ValueError("normalize='group_zscore' needs the group_ids condition")
        out = []
        for name, _, reward in self.components:
            parts = {key: value.detach().float().cpu().reshape(-1)
                     for key, value in reward(images, prompts, **conditions).items()}
            for key, value in parts.items():
                if value.shape[0] != images.shape[0]:
                    label = name if len(parts) == 1 else f"{name}/{key}"
                    raise ValueError(f"reward {label!r} returned {value.shape[0]} values for {images.shape[0]} images")
            out.append(parts)
        return out

    def combine(self, parts: list[dict[str, Tensor]], n: int, group_ids: Tensor | None = None) -> dict[str, Tensor]:
        """Every component's outputs labelled ``name`` (one output) or ``name/key``, plus the weighted ``"total"``."""
        out: dict[str, Tensor] = {}
        total = torch.zeros(n, dtype=torch.float32)
        for (name, weight, _), outputs in zip(self.components, parts, strict=True):
            for key, value in outputs.items():
                label = name if len(outputs) == 1 else f"{name}/{key}"
                w = weight.get(key, 0.0) if isinstance(weight, Mapping) else weight
                out[label] = value
                term = group_zscore(value, group_ids) if self.normalize == "group_zscore" else value
                total = total + w * term
        out["total"] = total
        return out


def build(spec) -> CompositeReward:
    """Build a composite from a ``RewardConfig`` (or a dict with ``components`` and ``normalize``).

    Each component is ``{name, weight, options}``; ``weight`` is a float for every output of the
    reward, or a ``{output: weight}`` mapping for rewards with several outputs. A component with
    ``backend: remote`` is scored by the ``slas reward serve`` server at its ``url``
    (:class:`slas.rewards.remote.RemoteReward`; its name need not be registered here); the remote
    components on one server share one request per batch.
    """
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    items = spec["components"] if isinstance(spec, Mapping) else spec
    normalize = spec.get("normalize", "none") if isinstance(spec, Mapping) else "none"
    components = []
    sessions: dict = {}  # remote components on one server share one request per batch
    for item in items:
        name = item["name"]
        weight = item.get("weight", 1.0)
        weight = dict(weight) if isinstance(weight, Mapping) else float(weight)
        if item.get("backend", "local") == "remote":
            from slas.rewards.remote import build_remote

            components.append((name, weight, build_remote(name, item, sessions)))
            continue
        if name not in _REGISTRY:
            raise KeyError(f"unknown reward {name!r}; available: {available()}")
        options = dict(item.get("options") or {})
        components.append((name, weight, _REGISTRY[name].factory(**options)))
    return CompositeReward(components, normalize=normalize)
