"""Reward-hacking diagnostics of an advantage rule, from one batch of rewards and the advantages it gave.

The paper's mechanism in numbers: prompt-level std normalisation divides a group's centred rewards by
that group's std, so the *amplification* |A| / |r - group mean| grows as the group's std shrinks, and
near-flat groups (rewards that differ only by the reward model's noise) still get full-size advantages.
SLAS divides by the batch std instead and shapes super-linearly, so small differences are shrunk rather
than blown up. These figures show which is happening in a run, iteration by iteration.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from slas.rl.advantages import group_index, group_mean_std

QUANTILES = (0.1, 0.5, 0.9)


def _spearman(x: Tensor, y: Tensor) -> float:
    """Rank correlation of two 1-D samples (NaN with fewer than 3 points or a constant side)."""
    if x.numel() < 3:
        return math.nan
    rx, ry = x.argsort().argsort().double(), y.argsort().argsort().double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denom if denom > 0 else math.nan


def shaping_diagnostics(rewards: Tensor, advantages: Tensor, group_ids: Tensor, *, near_flat_std: float) -> dict[str, float]:
    """Per-iteration figures of how the advantage rule treated the batch's groups.

    - ``diag/group_std/p10|p50|p90``: quantiles of the within-group (unbiased) reward std;
    - ``diag/amplification/mean|max``: |A| / |r - group mean| over samples whose centred reward is not 0;
    - ``diag/amplification_vs_std``: rank correlation, over groups, of a group's mean amplification with
      its std (strongly negative under prompt-std normalisation: the flatter the group, the larger the
      push; positive under SLAS's super-linear shaping);
    - ``diag/near_flat_groups``: share of groups with 0 < std < ``near_flat_std`` (they differ, a little);
    - ``diag/near_flat_large_adv``: share of those near-flat groups with some |A| > 1.
    """
    r = rewards.detach().double().cpu()
    adv = advantages.detach().double().cpu()
    valid = torch.isfinite(r)
    inverse, num_groups = group_index(group_ids.cpu())
    mean, std = group_mean_std(r, valid, inverse, num_groups)
    out = {f"diag/group_std/p{round(q * 100)}": float(torch.quantile(std, q)) for q in QUANTILES}
    centred = (r - mean[inverse]).abs()
    moved = valid & (centred > 1e-12)
    amp = torch.where(moved, adv.abs() / centred.clamp_min(1e-12), torch.zeros_like(r))
    out["diag/amplification/mean"] = float(amp[moved].mean()) if moved.any() else math.nan
    out["diag/amplification/max"] = float(amp[moved].max()) if moved.any() else math.nan
    counts = torch.zeros(num_groups, dtype=torch.float64).index_add(0, inverse, moved.double())
    group_amp = torch.zeros(num_groups, dtype=torch.float64).index_add(0, inverse, amp) / counts.clamp_min(1)
    has = counts > 0
    out["diag/amplification_vs_std"] = _spearman(std[has], group_amp[has])
    near_flat = (std > 0) & (std < near_flat_std)
    large = torch.zeros(num_groups, dtype=torch.float64).index_add(0, inverse, (adv.abs() > 1).double()) > 0
    out["diag/near_flat_groups"] = float(near_flat.double().mean())
    out["diag/near_flat_large_adv"] = float((near_flat & large).sum() / near_flat.sum()) if near_flat.any() else 0.0
    return out
