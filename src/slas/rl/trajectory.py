"""What a rollout hands the trainer: the sampled images, their groups and the recorded denoising chains."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Trajectory:
    """Denoising chains of N samples over T stochastic steps.

    ``latents[:, i]`` is the input of step i and ``latents[:, i + 1]`` its sampled output; ``log_probs[:, i]``
    is log p_old(latents[:, i + 1] | latents[:, i]). ``cond`` holds per-sample conditioning (leading dim N)
    and ``shared`` the conditioning common to all samples.
    """

    latents: Tensor  # [N, T + 1, ...]
    log_probs: Tensor  # [N, T]
    timesteps: Tensor  # [T]
    cond: dict[str, Tensor] = field(default_factory=dict)
    shared: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    @staticmethod
    def cat(parts: list[Trajectory]) -> Trajectory:
        first = parts[0]
        return Trajectory(
            latents=torch.cat([p.latents for p in parts]),
            log_probs=torch.cat([p.log_probs for p in parts]),
            timesteps=first.timesteps,
            cond={k: torch.cat([p.cond[k] for p in parts]) for k in first.cond},
            shared=first.shared,
        )


@dataclass
class Rollout:
    """Images [N, 3, H, W] in [0, 1], their prompts and group ids, and the trajectory that made them.

    ``group_ids`` number the groups of the batch (what advantages compare); ``keys`` are the data
    source's key of each sample's group and ``conditions`` its group's conditions, one value per sample
    (handed to the reward as keyword arguments).
    """

    images: Tensor
    prompts: list[str]
    group_ids: Tensor
    trajectory: Trajectory
    keys: list[str] = field(default_factory=list)
    conditions: dict[str, list[Any]] = field(default_factory=dict)

    @staticmethod
    def cat(parts: list[Rollout]) -> Rollout:
        return Rollout(
            images=torch.cat([p.images for p in parts]),
            prompts=[x for p in parts for x in p.prompts],
            group_ids=torch.cat([p.group_ids for p in parts]),
            trajectory=Trajectory.cat([p.trajectory for p in parts]),
            keys=[k for p in parts for k in p.keys],
            conditions={k: [v for p in parts for v in p.conditions[k]] for k in parts[0].conditions},
        )
