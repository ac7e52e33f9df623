"""What a rollout hands the trainer, and the policy protocol the trainer knows (never a concrete model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

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
    """Images [N, 3, H, W] in [0, 1], their prompts and group ids, and the trajectory that made them."""

    images: Tensor
    prompts: list[str]
    group_ids: Tensor
    trajectory: Trajectory

    @staticmethod
    def cat(parts: list[Rollout]) -> Rollout:
        return Rollout(
            images=torch.cat([p.images for p in parts]),
            prompts=[x for p in parts for x in p.prompts],
            group_ids=torch.cat([p.group_ids for p in parts]),
            trajectory=Trajectory.cat([p.trajectory for p in parts]),
        )


@runtime_checkable
class Policy(Protocol):
    """The protocol ``slas.rl.trainer.Trainer`` trains."""

    num_steps: int

    def rollout(self, prompts: list[str], *, group_size: int, seed: int) -> Rollout:
        """Sample ``group_size`` images per prompt with log-probs (no grad)."""

    def step_log_prob(self, trajectory: Trajectory, indices: Tensor, step: int | Tensor) -> Tensor:
        """Log-prob of the recorded transition ``step`` (int, or one per index) under the current weights."""

    def step_distribution(
        self, trajectory: Trajectory, indices: Tensor, step: int | Tensor, *, reference: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, std, log_prob) of that transition; ``reference=True`` uses the frozen initial weights."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def save_trainable(self, directory: Path) -> None: ...

    def load_trainable(self, directory: Path) -> None: ...
