"""DiffusionNFT (Edit-R1's objective): train the velocity on the forward process of the rollout's clean
latents, pulled towards the good samples and pushed off the bad ones through an implicit negative policy.

It is an :class:`slas.rl.protocols.Objective` like ``GRPOObjective`` and takes whatever advantages the trainer
computed (DanceGRPO's or SLAS's rule: nothing here knows which). It works on any flow-matching policy that
has ``model_output(trajectory, indices, latents, timesteps, *, reference=False)`` and records its schedule as
``trajectory.shared["sigmas"]`` (FLUX today; the editing policies use the same seam). The rollout's chain
may be deterministic (``sample.eta = 0``, as Edit-R1 samples): only its last latent is used.

Per sample i with clean latent x0 (``trajectory.latents[i, -1]``) and advantage A_i, per loss term (a time t):

    x_t  = (1 - t) x0 + t eps,  eps ~ N(0, I) fresh per (sample, term)
    v+   = beta v_theta + (1 - beta) v_old            (positive policy)
    v-   = (1 + beta) v_old - beta v_theta            (implicit negative policy)
    x0±  = x_t - t v±
    L±   = mean((x0± - x0)^2 / w±),  w± = mean|x0± - x0| (no grad, >= 1e-5)   (adaptive x0 weighting)
    r    = clamp(clamp(A, -A_max, A_max) / A_max / 2 + 0.5, 0, 1)
    loss = A_max (r L+ + (1 - r) L-) / beta  +  kl_coef mean((v_theta - v_ref)^2)

What Edit-R1 does (read from PKU-YuanGroup/Edit-R1 at commit 4217f25; facts only, no code carried over):

- ``scripts/train_nft_qwen_image_edit.py``: the clean latent is the rollout's last latent; each sample trains
  ``int(sample.num_steps * train.timestep_fraction)`` terms (L660), their t a per-sample random permutation of
  the rollout's own schedule timesteps (L996-1006), t = timestep / 1000 (L1045), fresh noise per term (L1049),
  x_t = (1 - t) x0 + t noise (L1051); v_old from the "old" LoRA adapter without grad (L1059-1071), v_ref with
  the adapters disabled (L1089); r as above (L1108-1135, ``adv_mode = "all"`` leaves A as it is); v+ and v-
  (L1145-1151); the adaptive weighting, in float64, clipped at 1e-5 (L1154-1175); loss = (r L+ + (1 - r) L-) /
  beta times ``adv_clip_max`` (L1176-1186); KL = ``train.beta`` * mean (v - v_ref)^2 (L1193-1197). The "old"
  adapter is also the one that samples the rollouts (L744); it starts as a copy of the trained one (L667-675)
  and after every epoch becomes decay * old + (1 - decay) * current (L1280-1289) with decay =
  min(0.001 * step, 0.5) for ``decay_type = 1`` (L198-218, step = optimizer steps so far). LoRA r 32, alpha 64,
  gaussian init (L477-481); an EMA (decay 0.9, L651-657) of the trained weights is used for evaluation and
  checkpoints.
- ``config/qwen_image_edit_nft.py``: Qwen/Qwen-Image-Edit-2509 (L17), 6 sampling steps (L18; 15 for
  evaluation, L19), guidance 1.0 (L20: true CFG off), resolution 512 (L21), KL coefficient ``train.beta`` 1e-4
  (L22), ``noise_level`` 0.7 (L23; unused, the sampler is deterministic), 12 images per prompt (L26), 24 groups
  per epoch (L31) in one optimizer step (L33-49 with ``gradient_step_per_epoch = 1``), ``decay_type`` 1 (L62),
  beta 1.0 (L63), ``adv_mode`` "all" (L64), deterministic sampling (L67) with the "dpm2" solver (L68); the
  ``qwen_mllm_reward`` preset (L71-84): reward ``mllm_score_continue``, 48 GPUs, ``ban_prompt`` on with
  std threshold 0.05 (groups with reward std < 0.05 and mean > 0.9 are masked out and banned).
- ``config/base.py``: lr 3e-4 (L66), AdamW betas (0.9, 0.999), weight decay 1e-4, eps 1e-8 (L67-74), max grad
  norm 1.0 (L79), one inner epoch (L82), ``adv_clip_max`` 5 (L84), ``timestep_fraction`` 0.99 (L87: 5 of 6
  steps), EMA on (L92), per-prompt stat tracking (L106) with ``global_std`` (L57): A = (reward - prompt mean)
  / (batch std + 1e-4) (``flow_grpo/stat_tracking.py`` L40-45).

How the old policy is provided here: as in Edit-R1, the old policy is the sampling policy. The objective is a
:class:`slas.rl.protocols.SamplingObjective`: with a decay schedule (``old_decay_*``, Edit-R1's decay_type 1 by
default) it keeps a copy of the trainable weights, which the trainer swaps into the policy for each rollout
(``sampling``) and which moves towards the trained weights after every iteration (``after_iteration``), and it
is checkpointed (``objective.pt``) so that a resumed run equals an uninterrupted one. v_old is the velocity of
those weights, computed without grad in :meth:`DiffusionNFTObjective.plan` for every (sample, term) before the
first optimizer step of the iteration, and cached: one no-grad forward per term, as Edit-R1's own old forward,
and right for any number of optimizer steps per iteration. With ``old_decay_rate = 0`` (no lag) no copy is
kept, the old weights are the current ones at each rollout, and at update 0 the trained velocity must equal
v_old (``old_dev_before_update`` = 0 up to numerics, like GRPO's ratio check); with a lag it measures the lag.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from slas.errors import SlasError
from slas.rl.protocols import ObjectivePlan, Policy
from slas.rl.trajectory import Rollout, Trajectory

WEIGHT_FLOOR = 1e-5  # Edit-R1's clip of the adaptive x0 weight (L1159)


class NFTUnsupported(SlasError, TypeError):
    """The policy or its trajectory lacks what DiffusionNFT needs (a flow schedule, ``model_output``)."""


# ------------------------------------------------------------------------------------------- pure math


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, ...] broadcastable against ``like``."""
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def nft_r(advantages: Tensor, adv_clip_max: float) -> Tensor:
    """The optimality probability r = clamp(clamp(A, -A_max, A_max) / A_max / 2 + 0.5, 0, 1) in [0, 1]:
    A = 0 weighs the positive and the negative policy alike, A >= A_max trains the positive one only."""
    a = advantages.clamp(-adv_clip_max, adv_clip_max)
    return (a / adv_clip_max / 2.0 + 0.5).clamp(0.0, 1.0)


def noised(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The flow-matching forward process x_t = (1 - t) x0 + t noise, t per sample [B]."""
    tt = _per_sample(t, x0)
    return (1 - tt) * x0 + tt * noise


def mixed_velocities(v: Tensor, v_old: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """(v+, v-): v+ = beta v + (1 - beta) v_old and the implicit negative v- = (1 + beta) v_old - beta v, so
    that v+ + v- = 2 v_old. Gradients flow through ``v`` only."""
    old = v_old.detach()
    return beta * v + (1 - beta) * old, (1 + beta) * old - beta * v


def x0_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """The clean latent a velocity predicts: x0 = x_t - t v."""
    return x_t - _per_sample(t, x_t) * v


def x0_error(x0_pred: Tensor, x0: Tensor, *, weighting: bool = True) -> Tensor:
    """Per-sample mean (x0_pred - x0)^2, divided (adaptive weighting) by the sample's mean |x0_pred - x0|,
    held constant and floored at 1e-5: every sample's term then has the scale of its own error, so
    near-clean times (small errors) are not drowned by noisy ones."""
    diff = x0_pred - x0
    dims = tuple(range(1, diff.ndim))
    if not weighting:
        return (diff**2).mean(dim=dims)
    with torch.no_grad():
        w = diff.double().abs().mean(dim=dims, keepdim=True).clamp_min(WEIGHT_FLOOR).to(diff.dtype)
    return (diff**2 / w).mean(dim=dims)


def nft_policy_loss(
    v: Tensor, v_old: Tensor, x_t: Tensor, x0: Tensor, t: Tensor, r: Tensor, *, beta: float, adv_clip_max: float,
    x0_weighting: bool = True,
) -> Tensor:
    """Per-sample DiffusionNFT loss A_max (r L+ + (1 - r) L-) / beta (see the module docstring)."""
    v_pos, v_neg = mixed_velocities(v, v_old, beta)
    pos = x0_error(x0_from_velocity(x_t, v_pos, t), x0, weighting=x0_weighting)
    neg = x0_error(x0_from_velocity(x_t, v_neg, t), x0, weighting=x0_weighting)
    r = r.to(pos.dtype)
    return adv_clip_max * (r * pos + (1 - r) * neg) / beta


def velocity_kl(v: Tensor, v_ref: Tensor) -> Tensor:
    """Per-sample mean (v - v_ref)^2: Edit-R1's KL to the reference, on the velocity."""
    return ((v - v_ref.detach()) ** 2).mean(dim=tuple(range(1, v.ndim)))


def old_decay(step: int, *, flat: int, rate: float, cap: float) -> float:
    """Edit-R1's ``return_decay``: 0 for the first ``flat`` optimizer steps, then ``(step - flat) * rate`` up to
    ``cap`` (decay_type 1: flat 0, rate 0.001, cap 0.5; type 2: 75, 0.0075, 0.999; type 0: no lag)."""
    return 0.0 if step < flat else min((step - flat) * rate, cap)


@contextmanager
def swapped_in(params: Sequence[torch.nn.Parameter], values: Sequence[Tensor]) -> Iterator[None]:
    """``params`` hold ``values`` inside the context and their own data again after it (even on error).

    The storages are exchanged, not copied, so no third copy of the weights is made (a full fine-tune's old
    policy already doubles them); ``values`` must match the parameters' shape, dtype and device."""
    for p, v in zip(params, values, strict=True):
        if v.shape != p.shape or v.dtype != p.dtype or v.device != p.device:
            raise ValueError(f"swapped_in: {tuple(v.shape)} {v.dtype} on {v.device} cannot stand in for a parameter "
                             f"{tuple(p.shape)} {p.dtype} on {p.device}")
    saved = [p.data for p in params]
    for p, v in zip(params, values, strict=True):
        p.data = v
    try:
        yield
    finally:
        for p, v in zip(params, saved, strict=True):
            p.data = v


# ------------------------------------------------------------------------------------------- the plan


def draw_times(
    sigmas: Tensor, timesteps: Tensor, num_samples: int, k: int, mode: str, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """([N, k] sigmas, [N, k] timesteps in scheduler units) of the loss terms.

    ``schedule`` (Edit-R1): k distinct steps of the rollout's schedule per sample, a fresh permutation each.
    ``uniform``: sigma ~ U(min, max) of the schedule's sigmas, its timestep at the schedule's own scale
    (timesteps / sigmas, 1000 for FLUX and Qwen-Image).
    """
    sig = sigmas[: len(timesteps)].float().cpu()
    ts = timesteps.float().cpu()
    if mode == "schedule":
        if k > len(ts):
            raise ValueError(f"{k} timesteps per sample but the schedule has {len(ts)} steps")
        idx = torch.stack([torch.randperm(len(ts), generator=generator)[:k] for _ in range(num_samples)])
        return sig[idx], ts[idx]
    if mode == "uniform":
        lo, hi = float(sig.min()), float(sig.max())
        s = lo + (hi - lo) * torch.rand(num_samples, k, generator=generator)
        return s, s * float(ts[0] / sig[0])
    raise ValueError(f"timesteps must be 'schedule' or 'uniform', got {mode!r}")


@dataclass
class NFTPlanData:
    """One iteration's loss terms: per (sample, term) its sigma, timestep, noise and the old velocity."""

    sigmas: Tensor  # [N, K]
    timesteps: Tensor  # [N, K]
    noise: Tensor  # [N, K, *latent]
    v_old: Tensor  # [N, K, *latent], float32, no grad


def _require_flow(policy: Policy, trajectory: Trajectory) -> Tensor:
    if not callable(getattr(policy, "model_output", None)):
        raise NFTUnsupported(f"train.objective=nft needs a policy with model_output(); {type(policy).__name__} has none")
    sigmas = trajectory.shared.get("sigmas")
    if sigmas is None:
        raise NFTUnsupported(f"train.objective=nft needs a flow-matching policy (trajectory.shared['sigmas']); "
                             f"{type(policy).__name__} records none")
    return sigmas


@dataclass
class DiffusionNFTObjective:
    """Edit-R1's DiffusionNFT as an objective (see the module docstring; defaults are Edit-R1's numbers).

    ``timesteps_per_sample`` None means ``num_steps - 1`` (Edit-R1: int(6 * 0.99) = 5); ``old_decay_*`` is the
    old policy's schedule (:func:`old_decay`; rate 0 = no lag); ``batch_size`` is how many samples one no-grad
    forward of the old velocity takes. Statistics: loss, policy_loss, kl_ref (when ``kl_coef`` > 0), r (mean),
    old_dev (mean (v - v_old)^2) and, at update 0, the largest |v - v_old| (``old_dev_before_update``: 0 up to
    numerics without lag, since v_old is then the current weights' velocity).
    """

    beta: float = 1.0
    kl_coef: float = 1e-4
    adv_clip_max: float = 5.0
    timesteps: str = "schedule"
    timesteps_per_sample: int | None = None
    x0_weighting: bool = True
    old_decay_flat: int = 0
    old_decay_rate: float = 0.001
    old_decay_max: float = 0.5
    batch_size: int = 4
    max_stats: frozenset[str] = frozenset({"old_dev_before_update"})
    _old: list[Tensor] | None = field(default=None, init=False, repr=False)  # the sampling weights when they lag
    _steps: int = field(default=0, init=False)  # optimizer steps so far (what the decay schedule reads)

    # ---------------------------------------------------------------- the old (sampling) policy
    @property
    def lags(self) -> bool:
        """Whether the old policy can lag behind the trained one (a decay schedule that is not always 0)."""
        return self.old_decay_rate > 0 and self.old_decay_max > 0

    @contextmanager
    def sampling(self, policy: Policy) -> Iterator[None]:
        """The policy holds the old weights inside (rollouts and v_old); without lag they are its own."""
        if not self.lags:
            yield
            return
        params = policy.trainable_parameters()
        self._place_old(policy)
        if self._old is None:  # the run's start (or a checkpoint without them): old = current, as Edit-R1 starts
            self._old = [p.detach().clone() for p in params]
        with swapped_in(params, self._old):
            yield

    def after_iteration(self, policy: Policy, optimizer_steps: int) -> None:
        """old <- decay old + (1 - decay) current, decay from the run's optimizer steps so far (Edit-R1 L1280)."""
        self._steps += optimizer_steps
        if not self.lags or self._old is None:
            return
        d = old_decay(self._steps, flat=self.old_decay_flat, rate=self.old_decay_rate, cap=self.old_decay_max)
        with torch.no_grad():
            for old, p in zip(self._old, policy.trainable_parameters(), strict=True):
                old.mul_(d).add_(p.detach(), alpha=1 - d)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self._steps}
        if self._old is not None:
            state["old"] = [t.detach().cpu() for t in self._old]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._steps = int(state.get("steps", 0))
        old = state.get("old")
        self._old = None if old is None else [t.clone() for t in old]

    def _place_old(self, policy: Policy) -> None:
        """Loaded old weights onto the devices of the policy's parameters."""
        if self._old is not None:
            self._old = [t.to(p.device, p.dtype) for t, p in zip(self._old, policy.trainable_parameters(), strict=True)]

    # ---------------------------------------------------------------- the objective

    def plan(self, policy: Policy, rollout: Rollout, advantages: Tensor, generator: torch.Generator) -> ObjectivePlan:
        traj = rollout.trajectory
        sigmas = _require_flow(policy, traj)
        n = traj.num_samples
        k = self.timesteps_per_sample or max(1, len(traj.timesteps) - 1)
        sig, ts = draw_times(sigmas, traj.timesteps, n, k, self.timesteps, generator)
        x0 = traj.latents[:, -1].float()
        noise = torch.randn((n, k, *x0.shape[1:]), generator=generator).to(x0.device)
        device = x0.device
        sig, ts = sig.to(device), ts.to(device)
        v_old = torch.empty_like(noise)
        with torch.no_grad(), self.sampling(policy):
            for start in range(0, n, self.batch_size):
                idx = torch.arange(start, min(n, start + self.batch_size), device=device)
                for j in range(k):
                    x_t = noised(x0[idx], noise[idx, j], sig[idx, j])
                    v_old[idx, j] = policy.model_output(traj, idx, x_t, ts[idx, j]).float().to(device)
        return ObjectivePlan(terms=k, data=NFTPlanData(sigmas=sig, timesteps=ts, noise=noise, v_old=v_old))

    def losses(
        self, policy: Policy, rollout: Rollout, advantages: Tensor, indices: Tensor, plan: ObjectivePlan, *,
        update: int,
    ) -> Iterator[tuple[Tensor, dict[str, float]]]:
        traj = rollout.trajectory
        data: NFTPlanData = plan.data
        idx = indices.to(data.noise.device)
        x0 = traj.latents[idx, -1].float()
        r = nft_r(advantages[indices].float(), self.adv_clip_max).to(x0.device)
        for j in range(plan.terms):
            t = data.sigmas[idx, j]
            x_t = noised(x0, data.noise[idx, j], t)
            v = policy.model_output(traj, idx, x_t, data.timesteps[idx, j]).float()
            v_old = data.v_old[idx, j].to(v.device)
            per_sample = nft_policy_loss(v, v_old, x_t.to(v.device), x0.to(v.device), t.to(v.device), r.to(v.device),
                                         beta=self.beta, adv_clip_max=self.adv_clip_max, x0_weighting=self.x0_weighting)
            policy_loss = per_sample.mean()
            loss = policy_loss
            with torch.no_grad():
                dev = v - v_old
                stats = {"policy_loss": float(policy_loss), "r": float(r.mean()), "old_dev": float((dev**2).mean())}
                if update == 0:
                    stats["old_dev_before_update"] = float(dev.abs().max())
            if self.kl_coef > 0:
                with torch.no_grad():
                    v_ref = policy.model_output(traj, idx, x_t, data.timesteps[idx, j], reference=True).float()
                kl = velocity_kl(v, v_ref).mean()
                loss = loss + self.kl_coef * kl
                stats["kl_ref"] = float(kl.detach())
            stats["loss"] = float(loss.detach())
            yield loss, stats
