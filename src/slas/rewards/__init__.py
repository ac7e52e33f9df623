"""Rewards: the registry, weighted composites (``build``, ``available``) and the built-in reward models.

Importing this package registers ``hpsv21``, ``clip``, ``image_similarity``, ``mllm_judge``, ``person_preservation``
and ``vividness``; their heavy libraries load only when a reward is built.
"""

from slas.rewards import clip, hps, mllm, preservation, similarity, vividness  # noqa: F401  (registration)
from slas.rewards.registry import CompositeReward, Reward, available, build, register

__all__ = ["CompositeReward", "Reward", "available", "build", "register"]
