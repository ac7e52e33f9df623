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


class CompositeReward:
    """Weighted sum of component rewards; returns every component plus ``"total"``."""

    def __init__(self, components: list[tuple[str, float, Reward]]) -> None:
        if not components:
            raise ValueError("a composite reward needs at least one component")
        self.components = components

    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        total = torch.zeros(images.shape[0], dtype=torch.float32)
        for name, weight, reward in self.components:
            parts = reward(images, prompts, **conditions)
            for key, value in parts.items():
                label = name if len(parts) == 1 else f"{name}/{key}"
                value = value.detach().float().cpu().reshape(-1)
                if value.shape[0] != images.shape[0]:
                    raise ValueError(f"reward {label!r} returned {value.shape[0]} values for {images.shape[0]} images")
                out[label] = value
                total = total + weight * value
        out["total"] = total
        return out


def build(spec) -> CompositeReward:
    """Build a composite from a ``RewardConfig`` (or a dict/list with name, weight, options)."""
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    items = spec["components"] if isinstance(spec, Mapping) else spec
    components = []
    for item in items:
        name = item["name"]
        if name not in _REGISTRY:
            raise KeyError(f"unknown reward {name!r}; available: {available()}")
        options = dict(item.get("options") or {})
        components.append((name, float(item.get("weight", 1.0)), _REGISTRY[name].factory(**options)))
    return CompositeReward(components)
