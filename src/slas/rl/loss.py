"""The PPO-clip policy loss of DanceGRPO / Flow-GRPO, per trained denoising step."""

from __future__ import annotations

import torch
from torch import Tensor


def ppo_clip_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float) -> tuple[Tensor, dict[str, Tensor]]:
    """``mean(max(-A rho, -A clamp(rho, 1 - eps, 1 + eps)))`` with rho = exp(logp_new - logp_old).

    Returns the loss and detached stats: mean ratio, max |rho - 1|, clip fraction, approx KL
    (0.5 * mean((logp_new - logp_old)^2), as DDPO logs).
    """
    diff = log_prob - old_log_prob.detach()
    ratio = torch.exp(diff)
    adv = advantages.detach().to(ratio.dtype)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "ratio": ratio.mean(),
            "ratio_dev": (ratio - 1).abs().max(),
            "clip_frac": ((ratio - 1).abs() > clip_range).float().mean(),
            "approx_kl": 0.5 * (diff**2).mean(),
        }
    return loss, stats


def gaussian_kl(mean: Tensor, ref_mean: Tensor, std: Tensor) -> Tensor:
    """KL(N(mean, std^2) || N(ref_mean, std^2)) per sample, averaged over non-batch dims (Flow-GRPO)."""
    kl = (mean - ref_mean.detach()) ** 2 / (2 * std**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))
