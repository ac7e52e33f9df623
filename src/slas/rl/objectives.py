"""Objectives: what the trainer minimises on a rollout (see ``slas.rl.protocols.Objective``).

:class:`GRPOObjective` is DanceGRPO's / Flow-GRPO's PPO-clip loss on the recorded stochastic
trajectory, on a fraction of its denoising steps, with an optional exact Gaussian KL to the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from slas.rl.loss import gaussian_kl, ppo_clip_loss
from slas.rl.protocols import ObjectivePlan, Policy
from slas.rl.trajectory import Rollout


def trained_steps(num_steps: int, fraction: float, num_samples: int, selection: str, generator: torch.Generator) -> Tensor:
    """[num_samples, k] step indices to train per sample.

    The last denoising step is never trained (DanceGRPO); k = int((num_steps - 1) * fraction), at least 1.
    ``random`` draws a fresh permutation per sample (DanceGRPO); ``first`` takes the k noisiest steps.
    """
    candidates = num_steps - 1
    k = max(1, int(candidates * fraction))
    if selection == "first":
        return torch.arange(k).expand(num_samples, k).clone()
    return torch.stack([torch.randperm(candidates, generator=generator)[:k] for _ in range(num_samples)])


@dataclass
class GRPOObjective:
    """PPO-clip per trained step, ``mean(max(-A rho, -A clamp(rho, 1 - eps, 1 + eps)))`` (+ ``kl_coef`` KL).

    ``plan`` draws each sample's trained steps; ``losses`` yields one term per trained step. Statistics:
    loss, mean ratio, clip fraction, approx KL, KL to the reference (with ``kl_coef``), and the largest
    |ratio - 1| before the first update (``ratio_dev_before_update``: exactly 0 up to numerics, since
    the recomputed log-prob must equal the rollout's).
    """

    clip_range: float = 1e-4
    kl_coef: float = 0.0
    timestep_fraction: float = 1.0
    timestep_selection: str = "random"
    max_stats: frozenset[str] = frozenset({"ratio_dev_before_update"})

    def plan(self, policy: Policy, rollout: Rollout, advantages: Tensor, generator: torch.Generator) -> ObjectivePlan:
        n = rollout.trajectory.num_samples
        steps = trained_steps(policy.num_steps, self.timestep_fraction, n, self.timestep_selection, generator)
        return ObjectivePlan(terms=steps.shape[1], data=steps.to(rollout.trajectory.log_probs.device))

    def losses(
        self, policy: Policy, rollout: Rollout, advantages: Tensor, indices: Tensor, plan: ObjectivePlan, *,
        update: int,
    ) -> Iterator[tuple[Tensor, dict[str, float]]]:
        traj = rollout.trajectory
        for j in range(plan.terms):
            s = plan.data[indices, j]
            if self.kl_coef > 0:
                mean, std, logp = policy.step_distribution(traj, indices, s)
                with torch.no_grad():
                    ref_mean = policy.step_distribution(traj, indices, s, reference=True)[0]
                kl = gaussian_kl(mean, ref_mean, std).mean()
            else:
                logp = policy.step_log_prob(traj, indices, s)
                kl = None
            loss, st = ppo_clip_loss(logp, traj.log_probs[indices, s], advantages[indices], self.clip_range)
            stats = {key: float(st[key]) for key in ("ratio", "clip_frac", "approx_kl")}
            if kl is not None:
                stats["kl_ref"] = float(kl.detach())
            if update == 0:
                stats["ratio_dev_before_update"] = float(st["ratio_dev"])
            full = loss + self.kl_coef * kl if kl is not None else loss
            stats["loss"] = float(full.detach())
            yield full, stats
