"""Stochastic sampler steps with Gaussian log-probabilities (the policy of diffusion RL).

Each step is x_next ~ N(mean(x, model_output), std^2). Sampling draws x_next; scoring takes a GIVEN
x_next (recorded at rollout) and returns its log-density under the current model output, which is how
training recomputes log-probs with gradients. Log-probs are averaged over the non-batch dimensions, as
in DDPO and DanceGRPO, and computed in float32.
"""

from __future__ import annotations

import math

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor | float) -> Tensor:
    """log N(x; mean, std^2) averaged over all but the batch dimension, in float32.

    Where ``std`` is 0 (a deterministic step: eta = 0, as DiffusionNFT's ODE rollouts) there is no density;
    the log-prob recorded there is 0, never a division by zero (nothing uses it: the objectives that
    train on such chains score the forward process instead)."""
    x = x.detach().float()
    mean = mean.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    if std.ndim == 1:
        std = _per_sample(std, mean)
    zero = std == 0
    safe = torch.where(zero, torch.ones_like(std), std)
    lp = -((x - mean) ** 2) / (2 * safe**2) - torch.log(safe) - _LOG_SQRT_2PI
    lp = torch.where(zero, torch.zeros_like(lp), lp)
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def _per_sample(v: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a scalar or per-sample [B] value against ``like`` [B, ...]."""
    v = torch.as_tensor(v, device=like.device, dtype=torch.float32)
    if v.ndim == 0:
        return v
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def sample_or_score(
    mean: Tensor, std: Tensor, prev_sample: Tensor | None, generator, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Draw x_next ~ N(mean, std^2) in ``dtype`` unless given, and score it against the float32 mean.

    A step whose std is 0 everywhere (eta = 0) is the deterministic mean, with no noise drawn."""
    if prev_sample is None:
        if not bool(torch.as_tensor(std).ne(0).any()):
            prev_sample = mean.to(dtype)
        else:
            noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
            prev_sample = (mean + std * noise).to(dtype)
    return prev_sample, gaussian_log_prob(prev_sample, mean, std)


# --------------------------------------------------------------------------- DDIM (SD 1.x)


def ddim_step_mean_std(scheduler, model_output: Tensor, timestep, sample: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Float32 mean and std of the DDIM(eta) transition x_t -> x_{t-1} (Song et al. 2021, eq. 12).

    ``scheduler`` is a diffusers ``DDIMScheduler`` after ``set_timesteps``; ``timestep`` an int or a
    per-sample tensor [B]. Supports epsilon, v and sample prediction, and the scheduler's clipping.
    """
    cfg = scheduler.config
    if getattr(cfg, "thresholding", False):
        raise ValueError("DDIM dynamic thresholding is not supported by ddim_step_mean_std")
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(...) before ddim_step_mean_std")
    t = torch.as_tensor(timestep, device=sample.device).long()
    prev_t = t - cfg.num_train_timesteps // scheduler.num_inference_steps
    acp = scheduler.alphas_cumprod.to(sample.device, torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, device=sample.device, dtype=torch.float32)
    a_t = _per_sample(acp[t.clamp(0, len(acp) - 1)], sample)
    a_prev = _per_sample(torch.where(prev_t >= 0, acp[prev_t.clamp(0, len(acp) - 1)], final), sample)
    b_t = 1 - a_t

    x = sample.float()
    eps_out = model_output.float()
    if cfg.prediction_type == "epsilon":
        x0 = (x - b_t.sqrt() * eps_out) / a_t.sqrt()
        eps = eps_out
    elif cfg.prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x - b_t.sqrt() * eps_out
        eps = a_t.sqrt() * eps_out + b_t.sqrt() * x
    elif cfg.prediction_type == "sample":
        x0 = eps_out
        eps = (x - a_t.sqrt() * x0) / b_t.sqrt()
    else:
        raise ValueError(f"unsupported prediction_type {cfg.prediction_type!r}")
    if cfg.clip_sample:
        x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        eps = (x - a_t.sqrt() * x0) / b_t.sqrt()

    variance = ((1 - a_prev) / b_t) * (1 - a_t / a_prev)
    std = eta * variance.clamp_min(0).sqrt()
    direction = (1 - a_prev - std**2).clamp_min(0).sqrt() * eps
    mean = a_prev.sqrt() * x0 + direction
    return mean, std


def ddim_step_with_logprob(
    scheduler,
    model_output: Tensor,
    timestep,
    sample: Tensor,
    eta: float = 1.0,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[Tensor, Tensor]:
    """One DDIM(eta > 0) step: sample (or score the given) x_{t-1}; returns (prev_sample, log_prob [B])."""
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for a stochastic step with a log-prob, got {eta}")
    mean, std = ddim_step_mean_std(scheduler, model_output, timestep, sample, eta)
    return sample_or_score(mean, std, prev_sample, generator, sample.dtype)


# --------------------------------------------------------------------------- flow matching (FLUX)


def flow_sde_mean_std(
    model_output: Tensor, sigma, sigma_next, sample: Tensor, eta: float, kind: str = "dance"
) -> tuple[Tensor, Tensor]:
    """Float32 mean and std of the SDE step sigma -> sigma_next for a velocity model (x_s = (1-s) x0 + s noise).

    ``kind="dance"`` (DanceGRPO's flux step): the Euler step plus a score drift -eta^2/2 * score * dsigma,
    score = -(x - (1-s) x0) / s^2, std = eta * sqrt(sigma - sigma_next).
    ``kind="flow"`` (Flow-GRPO's "sde"): std_t = eta * sqrt(s / (1 - s)) (s = 1 replaced by sigma_next,
    as Flow-GRPO uses sigma_max = sigmas[1] there), transition std = std_t * sqrt(sigma - sigma_next).
    """
    x = sample.float()
    v = model_output.float()
    s = _per_sample(torch.as_tensor(sigma, dtype=torch.float32, device=x.device), x)
    s_next = _per_sample(torch.as_tensor(sigma_next, dtype=torch.float32, device=x.device), x)
    dt = s_next - s  # negative
    if kind == "dance":
        x0 = x - s * v
        score = -(x - x0 * (1 - s)) / s**2
        mean = x + dt * v - 0.5 * eta**2 * score * dt
        std = eta * (s - s_next).sqrt()
    elif kind == "flow":
        std_t = eta * (s / (1 - torch.where(s >= 1, s_next, s))).sqrt()
        mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
        std = std_t * (-dt).sqrt()
    else:
        raise ValueError(f"kind must be 'dance' or 'flow', got {kind!r}")
    return mean, std


def flow_sde_step_with_logprob(
    model_output: Tensor,
    sigma,
    sigma_next,
    sample: Tensor,
    eta: float,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    kind: str = "dance",
) -> tuple[Tensor, Tensor]:
    """One flow-matching SDE step: sample (or score the given) x_next; returns (prev_sample, log_prob [B])."""
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for a stochastic step with a log-prob, got {eta}")
    mean, std = flow_sde_mean_std(model_output, sigma, sigma_next, sample, eta, kind)
    return sample_or_score(mean, std, prev_sample, generator, sample.dtype)
