"""Rewards: the registry and weighted composites (``build``, ``available``)."""

from slas.rewards.registry import CompositeReward, Reward, available, build, register

__all__ = ["CompositeReward", "Reward", "available", "build", "register"]
