"""Reward-hacking diagnostics of an advantage rule, from one batch of rewards and the advantages it gave.

The paper's mechanism in numbers: prompt-level std normalisation divides a group's centred rewards by
that group's std, so the *amplification* |A| / |r - group mean| grows as the group's std shrinks, and
near-flat groups (rewards that differ only by the reward model's noise) still get full-size advantages.
SLAS divides by the batch std instead and shapes super-linearly, so small differences are shrunk rather
than blown up. These figures show which is happening in a run, iteration by iteration.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from slas.rl.advantages import group_index, group_mean_std

QUANTILES = (0.1, 0.5, 0.9)


class ShapedBatch(NamedTuple):
    """One iteration's total rewards, the advantages the rule gave them and the group ids (global batch)."""

    rewards: Tensor
    advantages: Tensor
    group_ids: Tensor


def group_amplification(rewards: Tensor, advantages: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per group: its within-group reward std, its mean amplification |A| / |r - group mean| over the samples
    whose centred reward is not 0, and whether it has such a sample (a flat group has no amplification)."""
    std, amp, moved, inverse, num_groups = _sample_amplification(rewards, advantages, group_ids)
    return (std, *_per_group(amp, moved, inverse, num_groups))


def _sample_amplification(rewards: Tensor, advantages: Tensor, group_ids: Tensor):
    """(group std, per-sample amplification, sample moved off its group mean, sample -> group, group count)."""
    r = rewards.detach().double().cpu()
    adv = advantages.detach().double().cpu()
    valid = torch.isfinite(r)
    inverse, num_groups = group_index(group_ids.cpu())
    mean, std = group_mean_std(r, valid, inverse, num_groups)
    centred = (r - mean[inverse]).abs()
    moved = valid & (centred > 1e-12)
    amp = torch.where(moved, adv.abs() / centred.clamp_min(1e-12), torch.zeros_like(r))
    return std, amp, moved, inverse, num_groups


def _per_group(amp: Tensor, moved: Tensor, inverse: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    counts = torch.zeros(num_groups, dtype=torch.float64).index_add(0, inverse, moved.double())
    group_amp = torch.zeros(num_groups, dtype=torch.float64).index_add(0, inverse, amp) / counts.clamp_min(1)
    return group_amp, counts > 0


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
    std, amp, moved, inverse, num_groups = _sample_amplification(rewards, advantages, group_ids)
    group_amp, has = _per_group(amp, moved, inverse, num_groups)
    out = {f"diag/group_std/p{round(q * 100)}": float(torch.quantile(std, q)) for q in QUANTILES}
    out["diag/amplification/mean"] = float(amp[moved].mean()) if moved.any() else math.nan
    out["diag/amplification/max"] = float(amp[moved].max()) if moved.any() else math.nan
    out["diag/amplification_vs_std"] = _spearman(std[has], group_amp[has])
    near_flat = (std > 0) & (std < near_flat_std)
    big = (advantages.detach().double().cpu().abs() > 1).double()
    large = torch.zeros(num_groups, dtype=torch.float64).index_add(0, inverse, big) > 0
    out["diag/near_flat_groups"] = float(near_flat.double().mean())
    out["diag/near_flat_large_adv"] = float((near_flat & large).sum() / near_flat.sum()) if near_flat.any() else 0.0
    return out
