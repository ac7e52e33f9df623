"""Group-relative advantages: DanceGRPO's prompt-std normalisation and Super-Linear Advantage Shaping.

    delta_i = r_i - mean_{group(i)}(r)
    s_i     = sign(delta_i) |delta_i| ** power
    A_i     = clamp(s_i / (std_scope(s) + eps), -clip, clip)

With ``shape_before_norm=False`` the order is normalise-then-shape: A = delta / std_scope(delta),
A = sign(A)|A|**power, then the clip. Non-finite rewards are masked out: they take no part in any
mean or std and get advantage 0, so one broken reward never poisons its group or the batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

StdScope = Literal["prompt", "batch", "none"]
PRESETS: dict[str, tuple[StdScope, float | None]] = {
    "dancegrpo": ("prompt", 1.0),
    "slas": ("batch", None),  # power comes from the config
}


def _group_reduce(values: Tensor, inv: Tensor, num_groups: int, reduce: str) -> Tensor:
    out = torch.zeros(num_groups, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, inv, values, reduce=reduce, include_self=False)


def _flat_groups(r: Tensor, valid: Tensor, inv: Tensor, num_groups: int) -> Tensor:
    """Per group: True when all its valid rewards are equal (or it has none)."""
    big = torch.finfo(r.dtype).max
    gmax = _group_reduce(torch.where(valid, r, -big), inv, num_groups, "amax")
    gmin = _group_reduce(torch.where(valid, r, big), inv, num_groups, "amin")
    return gmax <= gmin


def _shape(x: Tensor, power: float) -> Tensor:
    return x if power == 1.0 else torch.sign(x) * x.abs().pow(power)


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """``(inverse, num_groups)``: each sample's dense group number (0 .. num_groups - 1) from any ids."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(inverse.max()) + 1


def group_mean_std(values: Tensor, valid: Tensor, inverse: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Per-group mean and unbiased std (``[num_groups]`` each) over the ``valid`` samples only.

    Invalid samples (NaN rewards, say) take no part: they count for nothing and their values are
    ignored. A group with one valid sample (or none) has std 0 and, with none, mean 0. The one place
    where advantages and the composite's per-group z-score compute these, so the two agree.
    """
    w = valid.to(values.dtype)
    x = torch.where(valid, values, torch.zeros_like(values))
    count = _group_reduce(w, inverse, num_groups, "sum")
    mean = _group_reduce(x * w, inverse, num_groups, "sum") / count.clamp_min(1)
    sq = _group_reduce(((x - mean[inverse]) ** 2) * w, inverse, num_groups, "sum")
    return mean, (sq / (count - 1).clamp_min(1)).sqrt()


def _scale(x: Tensor, valid: Tensor, inv: Tensor, num_groups: int, std_scope: StdScope, eps: float) -> Tensor:
    """Divide ``x`` by the unbiased std of its scope (over valid samples only)."""
    if std_scope == "none":
        return x
    if std_scope == "batch":
        xv = x[valid]
        std = xv.std(unbiased=True) if xv.numel() > 1 else x.new_zeros(())
        return x / (std + eps)
    if std_scope == "prompt":
        _, std = group_mean_std(x, valid, inv, num_groups)  # groups of one: std 0, and their x is 0
        return x / (std[inv] + eps)
    raise ValueError(f"std_scope must be 'prompt', 'batch' or 'none', got {std_scope!r}")


def compute_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    std_scope: StdScope = "batch",
    power: float = 1.0,
    clip: float | None = 5.0,
    eps: float = 1e-8,
    shape_before_norm: bool = True,
) -> Tensor:
    """Advantages for a (globally gathered) batch of rewards [N] grouped by prompt ``group_ids`` [N]."""
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be 1-D of the same length, got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=out_dtype, device=rewards.device)

    r = rewards.detach().to(torch.float64)
    valid = torch.isfinite(r)
    r = torch.where(valid, r, torch.zeros_like(r))
    inv, num_groups = group_index(group_ids)
    mean, _ = group_mean_std(r, valid, inv, num_groups)
    delta = r - mean[inv]
    # A group whose valid rewards are all equal has exactly zero advantage (no rounding residue).
    flat = _flat_groups(r, valid, inv, num_groups)[inv]
    delta = torch.where(valid & ~flat, delta, torch.zeros_like(delta))

    if shape_before_norm:
        adv = _scale(_shape(delta, power), valid, inv, num_groups, std_scope, eps)
    else:
        adv = _shape(_scale(delta, valid, inv, num_groups, std_scope, eps), power)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    return adv.to(out_dtype)


def zero_std_group_ratio(rewards: Tensor, group_ids: Tensor) -> float:
    """Share of prompt groups whose finite rewards are all equal (they carry no learning signal)."""
    if rewards.numel() == 0:
        return 0.0
    r = rewards.detach().to(torch.float64)
    valid = torch.isfinite(r)
    inv, num_groups = group_index(group_ids)
    flat = _flat_groups(r, valid, inv, num_groups)
    return float(flat.to(torch.float64).mean())
