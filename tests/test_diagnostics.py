"""The shaping diagnostics show the paper's mechanism: prompt-std normalisation amplifies flat groups."""

from __future__ import annotations

import math

import torch

from slas.rl.advantages import compute_advantages
from slas.rl.diagnostics import shaping_diagnostics


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 groups of 8: group g's rewards spread with std ~ 10**(-g/2), from clearly different to noise."""
    gen = torch.Generator().manual_seed(0)
    rewards = torch.cat([0.5 + 10 ** (-g / 2) * torch.randn(8, generator=gen, dtype=torch.float64) for g in range(8)])
    return rewards, torch.arange(8).repeat_interleave(8)


def _diag(std_scope: str, power: float) -> dict[str, float]:
    rewards, groups = _batch()
    adv = compute_advantages(rewards, groups, std_scope=std_scope, power=power, clip=None)
    return shaping_diagnostics(rewards, adv, groups, near_flat_std=0.005)


def test_prompt_std_amplifies_flat_groups_and_slas_does_not():
    dance, slas = _diag("prompt", 1.0), _diag("batch", 2.0)
    assert dance["diag/amplification_vs_std"] < -0.9  # the flatter the group, the larger the push
    assert slas["diag/amplification_vs_std"] > 0.9  # super-linear: small differences shrink
    # 0 < std < 0.005: groups 5, 6, 7 (std ~ 3e-3, 1e-3, 3e-4)
    assert dance["diag/near_flat_groups"] == slas["diag/near_flat_groups"] == 3 / 8
    assert dance["diag/near_flat_large_adv"] == 1.0  # every near-flat group still gets |A| > 1
    assert slas["diag/near_flat_large_adv"] == 0.0
    assert dance["diag/amplification/max"] > 1000 > slas["diag/amplification/max"]


def test_quantiles_of_the_group_std_and_nan_safety():
    rewards, groups = _batch()
    rewards[3] = float("nan")  # masked: the advantage rule gives it 0, the diagnostics skip it
    adv = compute_advantages(rewards, groups, std_scope="batch", power=2.0)
    d = shaping_diagnostics(rewards, adv, groups, near_flat_std=0.01)
    assert d["diag/group_std/p10"] < d["diag/group_std/p50"] < d["diag/group_std/p90"] <= 1.5
    assert all(math.isfinite(v) for v in d.values())


def test_flat_groups_carry_no_amplification():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 2.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = compute_advantages(rewards, groups, std_scope="prompt", power=1.0)
    d = shaping_diagnostics(rewards, adv, groups, near_flat_std=0.01)
    assert d["diag/near_flat_groups"] == 0.0  # group 0 is exactly flat, not near-flat
    assert abs(d["diag/amplification/mean"] - 1.0) < 1e-6  # group 1: std 1, |A| = |r - mean|
    assert math.isnan(d["diag/amplification_vs_std"])  # one group moved: no correlation to speak of


def test_reward_judge_correlation_pairs_each_evaluation_with_the_reward_since_the_last():
    import math

    from slas.rl.callbacks import RewardJudgeCorrelation

    cb = RewardJudgeCorrelation()
    rewards = [0.1, 0.3, 0.5, 0.7, 0.9, 1.1]
    judges = {2: 0.30, 4: 0.20, 6: 0.10}  # the reward climbs while the judge falls: hacking
    logged = {}
    for it, r in enumerate(rewards, start=1):
        metrics = {"reward/total/mean": r}
        if it in judges:
            metrics["eval/judge/overall"] = judges[it]
            metrics["eval/judge/overall_se"] = 0.01  # not an evaluation of its own
        logged[it] = cb.on_step_end(None, metrics)
    assert logged[1] is None and logged[2] == {} and logged[4] == {}  # fewer than three evaluations
    assert set(logged[6]) == {"diag/reward_judge_corr/judge"}
    # pairs (mean reward since the last evaluation, judge): (0.2, 0.3), (0.6, 0.2), (1.0, 0.1): exactly -1
    assert math.isclose(logged[6]["diag/reward_judge_corr/judge"], -1.0)
