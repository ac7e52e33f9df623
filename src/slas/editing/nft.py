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

How the old velocity is provided here: v_old is the velocity of the weights that sampled the rollout, computed
without grad in :meth:`DiffusionNFTObjective.plan` for every (sample, term) before the first optimizer step of
the iteration, and cached. That is Edit-R1's old adapter while its decay is 0 (its first steps, and every step
of a run whose old policy tracks the current one), and it keeps Edit-R1's invariant that the old policy is
the sampling policy. Edit-R1's lagging old policy (decay up to 0.5) would also have to SAMPLE the rollouts,
which is the policy's and trainer's business, not an objective's; it is not reproduced. The cache costs one
no-grad forward per term, as Edit-R1's own old forward does, and works with any number of optimizer steps per
iteration; at update 0 the current velocity must equal it (``old_dev_before_update``, like GRPO's ratio check).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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

    ``timesteps_per_sample`` None means ``num_steps - 1`` (Edit-R1: int(6 * 0.99) = 5); ``batch_size`` is how
    many samples one no-grad forward of the old velocity takes. Statistics: loss, policy_loss, kl_ref (when
    ``kl_coef`` > 0), r (mean), old_dev (mean (v - v_old)^2) and, at update 0, the largest |v - v_old|
    (``old_dev_before_update``: 0 up to numerics, since v_old is the sampling weights' velocity).
    """

    beta: float = 1.0
    kl_coef: float = 1e-4
    adv_clip_max: float = 5.0
    timesteps: str = "schedule"
    timesteps_per_sample: int | None = None
    x0_weighting: bool = True
    batch_size: int = 4
    max_stats: frozenset[str] = frozenset({"old_dev_before_update"})

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
        with torch.no_grad():
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
