"""The trainer against its protocols alone: a fake Gaussian-walk policy, a fake reward, a fake data source.

No diffusers model anywhere: what passes here is what any policy/reward/objective that keeps the
protocols of ``slas.rl.protocols`` gets from the trainer.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from slas.config import TrainerConfig
from slas.rl.checkpoint import list_checkpoints
from slas.rl.objectives import GRPOObjective
from slas.rl.protocols import (
    Callback,
    DataSource,
    Group,
    GroupLike,
    Objective,
    ObjectivePlan,
    Policy,
    RewardFn,
    as_groups,
)
from slas.rl.trainer import Trainer
from slas.rl.trajectory import Rollout, Trajectory

DIM, STEPS, SIGMA = 4, 5, 0.3


def _log_prob(x: Tensor, mean: Tensor, std: float) -> Tensor:
    return torch.distributions.Normal(mean, std).log_prob(x).mean(dim=-1)


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


def _config(tmp_path: Path, **run: Any) -> TrainerConfig:
    return TrainerConfig.model_validate({
        "run": {"name": "walk", "iterations": 12, "checkpoint_every": 4, "progress": False, **run},
        "sample": {"group_size": 6, "prompts_per_iter": 2},
        "rl": {"preset": "slas", "power": 2.0},
        "train": {"clip_range": 0.2, "batch_size": 4, "gradient_accumulation_steps": 1, "max_grad_norm": None},
        "lr": 0.05,
        "run_dir": tmp_path / "run",
    })


def test_fakes_keep_the_protocols():
    assert isinstance(WalkPolicy(), Policy)
    assert isinstance(PairSource(), DataSource)
    assert isinstance(BrightnessReward(), RewardFn)
    assert isinstance(GRPOObjective(), Objective)


def test_training_raises_the_reward_with_hooks_in_order(tmp_path):
    policy, reward, tracker, rec = WalkPolicy(), BrightnessReward(), ListTracker(), Recorder()
    trainer = Trainer(_config(tmp_path), policy, reward, PairSource(), tracker=tracker, callbacks=[rec],
                      checkpoint_metadata={"note": "kept"})
    history = trainer.train()
    rewards = [m["reward/total/mean"] for m in history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.05, rewards
    assert float(policy.mu.detach()[0]) > 0.3  # the drift of the rewarded channel went up
    assert all(m["ratio_dev_before_update"] < 1e-6 for m in history)
    # callbacks: begin, then per iteration step -> log (-> checkpoint every 4), then end
    assert rec.events[0] == ("begin", 0) and rec.events[-1] == ("end", 12)
    assert [e for e in rec.events if e[0] == "checkpoint"] == [("checkpoint", 4), ("checkpoint", 8), ("checkpoint", 12)]
    assert rec.events[1:4] == [("step", 1), ("log", 1), ("step", 2)]
    # what on_step_end returned is in the same step's metrics; grids go with checkpoints
    assert [s for s, _ in tracker.metrics] == list(range(1, 13))
    assert all(m["eval/extra"] == s for s, m in tracker.metrics)
    assert tracker.images == [("samples/rollout", 4), ("samples/rollout", 8), ("samples/rollout", 12)]
    # the reward got group ids and the groups' own conditions; groups are items, not prompt texts
    first = reward.calls[0]
    assert first["group_ids"].tolist() == [0] * 6 + [1] * 6
    assert first["target"] == [0.0] * 6 + [1.0] * 6
    assert (tmp_path / "run" / "checkpoints" / "iter_000012" / "trainer_state.json").read_text().count('"kept"') == 1


def test_groups_with_one_prompt_text_stay_separate(tmp_path):
    """Editing's fixed instruction: every group has the same text; advantages still compare within a group."""
    policy, reward = WalkPolicy(), BrightnessReward()
    trainer = Trainer(_config(tmp_path), policy, reward, PairSource())
    rollout = policy.rollout(trainer.data.next(2), group_size=6, seed=0)
    assert len(set(rollout.prompts)) == 1 and sorted(set(rollout.keys)) == ["item-0", "item-1"]
    metrics = trainer.step()
    assert metrics["zero_std_group_ratio"] == 0.0 and math.isfinite(metrics["adv/mean_abs"])


def test_stop_checkpoints_and_resume_continues_the_data(tmp_path):
    policy, source = WalkPolicy(), PairSource()
    trainer = Trainer(_config(tmp_path), policy, BrightnessReward(), source, callbacks=[Recorder(stop_at=5)])
    trainer.train()
    assert trainer.stopped and trainer.iteration == 5
    assert [p.name for p in list_checkpoints(trainer.ckpt_dir)] == ["iter_000004", "iter_000005"]
    fresh = Trainer(_config(tmp_path), WalkPolicy(), BrightnessReward(), PairSource())
    fresh.load_checkpoint()
    assert fresh.iteration == 5 and fresh.data.state_dict() == source.state_dict()
    assert torch.equal(fresh.policy.mu, policy.mu)


class CountingObjective(GRPOObjective):
    """A second objective plugged in without touching the loop: GRPO's terms, counted."""

    def __init__(self) -> None:
        super().__init__(clip_range=0.2)
        self.terms = 0

    def losses(self, policy, rollout, advantages, indices, plan: ObjectivePlan, *, update: int) -> Iterator:
        for loss, stats in super().losses(policy, rollout, advantages, indices, plan, update=update):
            self.terms += 1
            yield loss, {**stats, "counted": 1.0}


def test_an_objective_plugs_in(tmp_path):
    objective = CountingObjective()
    trainer = Trainer(_config(tmp_path), WalkPolicy(), BrightnessReward(), PairSource(), objective=objective)
    metrics = trainer.step()
    # 3 micro-batches of 4 samples x (STEPS - 1) trained steps (the last step is never trained)
    assert objective.terms == 3 * (STEPS - 1)
    assert metrics["counted"] == 1.0 and metrics["optimizer_steps"] == 3.0


def test_kl_to_the_reference_is_logged(tmp_path):
    cfg = _config(tmp_path).model_copy(update={"train": _config(tmp_path).train.model_copy(update={"kl_coef": 0.1})})
    trainer = Trainer(cfg, WalkPolicy(), BrightnessReward(), PairSource())
    trainer.step()
    metrics = trainer.step()  # after one update the policy moved away from the reference
    assert metrics["kl_ref"] > 0


def test_the_engine_imports_no_model_or_platform_library():
    code = ("import sys, slas.rl.trainer, slas.rl.objectives, slas.rl.callbacks; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'transformers', 'mlflow', "
            "'sqlalchemy', 'open_clip', 'peft', 'typer'}); print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
