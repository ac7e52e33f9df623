"""Fakes that keep the RL protocols without any model: a Gaussian-walk policy, an item data source whose
groups all share one prompt text, a brightness reward, a recording callback and an in-memory tracker.

They let tests (and anyone writing a new trainer feature) exercise ``slas.rl.trainer.Trainer`` in
milliseconds, with no diffusers pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from slas.config import TrainerConfig
from slas.rl.protocols import Callback, Group, GroupLike, as_groups
from slas.rl.trajectory import Rollout, Trajectory

DIM, STEPS, SIGMA = 4, 5, 0.3


def _log_prob(x: Tensor, mean: Tensor, std: float) -> Tensor:
    return torch.distributions.Normal(mean, std, validate_args=False).log_prob(x).mean(dim=-1)


class WalkPolicy:
    """x_{t+1} ~ N(x_t + mu / T, SIGMA^2): a policy whose only weights are the drift ``mu``."""

    num_steps = STEPS

    def __init__(self) -> None:
        self.mu = torch.nn.Parameter(torch.zeros(DIM))
        self.reference_mu = self.mu.detach().clone()

    def _mean(self, x: Tensor, mu: Tensor) -> Tensor:
        return x + mu / STEPS

    def rollout(self, groups: list[GroupLike], *, group_size: int, seed: int) -> Rollout:
        groups = as_groups(groups)
        chains, log_probs = [], []
        for j, _ in enumerate(groups):
            gen = torch.Generator().manual_seed(seed + j)
            for _ in range(group_size):
                x = [torch.zeros(DIM)]
                lp = []
                for _ in range(STEPS):
                    mean = self._mean(x[-1], self.mu.detach())
                    nxt = mean + SIGMA * torch.randn(DIM, generator=gen)
                    lp.append(_log_prob(nxt, mean, SIGMA))
                    x.append(nxt)
                chains.append(torch.stack(x))
                log_probs.append(torch.stack(lp))
        latents = torch.stack(chains)
        final = torch.sigmoid(latents[:, -1, :3])
        images = final[:, :, None, None].expand(-1, 3, 2, 2).clone()
        traj = Trajectory(latents=latents, log_probs=torch.stack(log_probs), timesteps=torch.arange(STEPS))
        per = lambda values: [v for v in values for _ in range(group_size)]  # noqa: E731
        return Rollout(images=images, prompts=per([g.prompt for g in groups]),
                       group_ids=torch.arange(len(groups)).repeat_interleave(group_size), trajectory=traj,
                       keys=per([g.key for g in groups]),
                       conditions={k: per([g.conditions[k] for g in groups]) for k in groups[0].conditions})

    def step_distribution(self, trajectory: Trajectory, indices: Tensor, step: int | Tensor, *, reference: bool = False):
        steps = torch.as_tensor(step).reshape(-1).expand(len(indices))
        x = trajectory.latents[indices, steps]
        mean = self._mean(x, self.reference_mu if reference else self.mu)
        std = torch.full_like(mean, SIGMA)
        return mean, std, _log_prob(trajectory.latents[indices, steps + 1], mean, SIGMA)

    def step_log_prob(self, trajectory: Trajectory, indices: Tensor, step: int | Tensor) -> Tensor:
        return self.step_distribution(trajectory, indices, step)[2]

    def generate(self, groups: list[GroupLike], seeds: list[int], *, batch_size: int = 8) -> Tensor:
        final = torch.sigmoid(self.mu.detach()[:3]).expand(len(seeds), 3)
        return final[:, :, None, None].expand(-1, 3, 2, 2).clone()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.mu]

    def save_trainable(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"mu": self.mu.detach()}, directory / "mu.safetensors")

    def load_trainable(self, directory: Path) -> None:
        self.mu.data.copy_(load_file(directory / "mu.safetensors")["mu"])


class PairSource:
    """Groups keyed by an item id, all with the SAME prompt text (like editing's fixed instruction)."""

    def __init__(self, n: int = 3) -> None:
        self.items = [Group(key=f"item-{i}", prompt="hold the product", conditions={"target": float(i)}) for i in range(n)]
        self.position = 0

    def next(self, k: int) -> list[Group]:
        out = [self.items[(self.position + i) % len(self.items)] for i in range(k)]
        self.position += k
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.position = int(state["position"])


class BrightnessReward:
    """Mean brightness of the first channel, plus what the trainer hands over (recorded for checks)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]:
        self.calls.append(conditions)
        bright = images[:, 0].mean(dim=(1, 2))
        return {"bright": bright, "total": bright}


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple[str, int]] = []
        self.stop_at = stop_at

    def on_train_begin(self, trainer):
        self.events.append(("begin", trainer.iteration))

    def should_stop(self, trainer):
        return self.stop_at is not None and trainer.iteration >= self.stop_at

    def on_step_end(self, trainer, metrics):
        self.events.append(("step", trainer.iteration))
        return {"eval/extra": float(trainer.iteration)}

    def on_log(self, trainer, metrics):
        self.events.append(("log", trainer.iteration))

    def on_checkpoint(self, trainer, path):
        self.events.append(("checkpoint", trainer.iteration))

    def on_train_end(self, trainer):
        self.events.append(("end", trainer.iteration))


class ListTracker:
    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.images: list[tuple[str, int]] = []
        self.closed: str | None = None

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def log_image(self, image, key, step):
        self.images.append((key, step))

    def close(self, status="FINISHED"):
        self.closed = status


def walk_config(tmp_path: Path, **run: Any) -> TrainerConfig:
    """A small SLAS run of :class:`WalkPolicy` in ``tmp_path/run`` (``run`` overrides the run section)."""
    return TrainerConfig.model_validate({
        "run": {"name": "walk", "iterations": 12, "checkpoint_every": 4, "progress": False, **run},
        "sample": {"group_size": 6, "prompts_per_iter": 2},
        "rl": {"preset": "slas", "power": 2.0},
        "train": {"clip_range": 0.2, "batch_size": 4, "gradient_accumulation_steps": 1, "max_grad_norm": None},
        "lr": 0.05,
        "run_dir": tmp_path / "run",
    })
