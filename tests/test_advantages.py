"""Group-relative advantages: hand-computed cases and invariants of ``compute_advantages``.

Shared hand example (used by several tests):

    rewards   = [1, 2, 3, 6 | 0, 4]        group ids [0, 0, 0, 0 | 1, 1]
    group mean  = 3 | 2
    delta       = [-2, -1, 0, 3 | -2, 2]

Expected numbers were worked out by hand and checked with numpy (``np.std(..., ddof=1)``); they are
written out literally so the tests never re-implement the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from slas.rl.advantages import compute_advantages, group_index, group_mean_std, zero_std_group_ratio

REWARDS = [1.0, 2.0, 3.0, 6.0, 0.0, 4.0]
GROUPS = [0, 0, 0, 0, 1, 1]


def _adv(rewards, groups, **kw) -> torch.Tensor:
    return compute_advantages(
        torch.tensor(rewards, dtype=torch.float32), torch.tensor(groups, dtype=torch.long), **kw
    )


def _close(got: torch.Tensor, expected, atol: float = 1e-5) -> None:
    exp = torch.tensor(expected, dtype=torch.float64)
    assert got.shape == exp.shape
    assert torch.allclose(got.double(), exp, atol=atol, rtol=0), f"got {got.tolist()}, expected {expected}"


# --------------------------------------------------------------------------- hand-computed cases


def test_prompt_scope_dancegrpo_hand_computed():
    # group 0: delta [-2,-1,0,3], unbiased var = (4+1+0+9)/3 = 14/3, std = 2.1602469
    #          -> [-0.9258201, -0.4629100, 0, 1.3887301]
    # group 1: delta [-2, 2], unbiased var = 8/1, std = 2.8284271 -> [-0.7071068, 0.7071068]
    adv = _adv(REWARDS, GROUPS, std_scope="prompt", power=1.0, clip=None)
    _close(adv, [-0.9258201, -0.4629100, 0.0, 1.3887301, -0.7071068, 0.7071068])


def test_prompt_scope_power2_hand_computed():
    # s = sign(d)d^2: group 0 [-4,-1,0,9] (mean 1, unbiased var (25+4+1+64)/3 = 94/3, std 5.5976185)
    #                 group 1 [-4, 4] (std 5.6568542)
    adv = _adv(REWARDS, GROUPS, std_scope="prompt", power=2.0, clip=None)
    _close(adv, [-0.7145896, -0.1786474, 0.0, 1.6078266, -0.7071068, 0.7071068])


def test_batch_scope_power1_hand_computed():
    # all deltas [-2,-1,0,3,-2,2]: mean 0, sum of squares 22, unbiased var 22/5 = 4.4, std 2.0976177
    adv = _adv(REWARDS, GROUPS, std_scope="batch", power=1.0, clip=None)
    _close(adv, [-0.9534626, -0.4767313, 0.0, 1.4301939, -0.9534626, 0.9534626])


def test_batch_scope_power2_hand_computed():
    # s = [-4,-1,0,9,-4,4]: mean 2/3, sum s^2 = 130, sum (s-mean)^2 = 130 - 6*(4/9) = 127.3333,
    # unbiased var 25.466667, std 5.0464509 -> s / std
    adv = _adv(REWARDS, GROUPS, std_scope="batch", power=2.0, clip=None)
    _close(adv, [-0.7926363, -0.1981591, 0.0, 1.7834316, -0.7926363, 0.7926363])


def test_batch_scope_fractional_power_hand_computed():
    # s = sign(d)|d|^1.5 = [-2.8284271, -1, 0, 5.1961524, -2.8284271, 2.8284271], unbiased std 3.2152207
    adv = _adv(REWARDS, GROUPS, std_scope="batch", power=1.5, clip=None)
    _close(adv, [-0.8796992, -0.3110206, 0.0, 1.6161106, -0.8796992, 0.8796992])


def test_scope_none_is_centring_then_shaping():
    # power 1: A = delta; power 2: A = sign(d) d^2 (no division)
    _close(_adv(REWARDS, GROUPS, std_scope="none", power=1.0, clip=None), [-2.0, -1.0, 0.0, 3.0, -2.0, 2.0])
    _close(_adv(REWARDS, GROUPS, std_scope="none", power=2.0, clip=None), [-4.0, -1.0, 0.0, 9.0, -4.0, 4.0])
    # the default clip (5) bites on the 9
    _close(_adv(REWARDS, GROUPS, std_scope="none", power=2.0), [-4.0, -1.0, 0.0, 5.0, -4.0, 4.0])


def test_normalise_then_shape_order_batch():
    # shape_before_norm=False: A = d / 2.0976177 (batch std of delta), then sign(A) A^2 = sign(d) d^2 / 4.4
    #   -> [-4/4.4, -1/4.4, 0, 9/4.4, -4/4.4, 4/4.4]
    adv = _adv(REWARDS, GROUPS, std_scope="batch", power=2.0, clip=None, shape_before_norm=False)
    _close(adv, [-0.9090909, -0.2272727, 0.0, 2.0454545, -0.9090909, 0.9090909])
    # ... which is not the shape-then-normalise answer
    other = _adv(REWARDS, GROUPS, std_scope="batch", power=2.0, clip=None, shape_before_norm=True)
    assert not torch.allclose(adv, other, atol=1e-3)


def test_normalise_then_shape_order_prompt():
    # prompt-normalised deltas [-0.9258201,-0.4629100,0,1.3887301 | -0.7071068,0.7071068], then squared
    # with sign: group 0 -> d^2/(14/3) = [-6/7, -3/14, 0, 27/14]; group 1 -> [-0.5, 0.5]
    adv = _adv(REWARDS, GROUPS, std_scope="prompt", power=2.0, clip=None, shape_before_norm=False)
    _close(adv, [-0.8571429, -0.2142857, 0.0, 1.9285714, -0.5, 0.5])


def test_normalise_then_shape_clip_is_last():
    # normalise first: 2.0454545 for the 9 -> clip 2.0 must act AFTER the shaping
    adv = _adv(REWARDS, GROUPS, std_scope="batch", power=2.0, clip=2.0, shape_before_norm=False)
    _close(adv, [-0.9090909, -0.2272727, 0.0, 2.0, -0.9090909, 0.9090909])


def test_clip_active_and_disabled():
    # batch power 1 (see above): 1.4301939 is the largest; clip 1.0 caps it and the +-0.95 stay
    adv = _adv(REWARDS, GROUPS, std_scope="batch", power=1.0, clip=1.0)
    _close(adv, [-0.9534626, -0.4767313, 0.0, 1.0, -0.9534626, 0.9534626])
    # scope none: rewards [0, 20] -> delta [-10, 10]; default clip 5 -> [-5, 5]; clip None -> [-10, 10]
    _close(_adv([0.0, 20.0], [0, 0], std_scope="none"), [-5.0, 5.0])
    _close(_adv([0.0, 20.0], [0, 0], std_scope="none", clip=None), [-10.0, 10.0])
    # clip is symmetric: rewards [20, 0] -> [5, -5]
    _close(_adv([20.0, 0.0], [0, 0], std_scope="none", clip=3.0), [3.0, -3.0])


# --------------------------------------------------------------------------- zero-variance & degenerate


@pytest.mark.parametrize("std_scope", ["prompt", "batch", "none"])
@pytest.mark.parametrize("shape_before_norm", [True, False])
@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_flat_groups_are_exactly_zero(std_scope, shape_before_norm, power):
    # 0.1 * 3 / 3 != 0.1 in floating point: a naive mean leaves a residue that a prompt std would blow up
    rewards = [0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 1.0, 2.0, 4.0]
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3]
    adv = _adv(rewards, groups, std_scope=std_scope, power=power, shape_before_norm=shape_before_norm)
    assert torch.isfinite(adv).all()
    assert torch.equal(adv[:13], torch.zeros(13))
    assert (adv[13:] != 0).all()  # the informative group still gets a signal
    # float64 input, same story
    adv64 = compute_advantages(
        torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups), std_scope=std_scope, power=power
    )
    assert adv64.dtype == torch.float64
    assert torch.equal(adv64[:13], torch.zeros(13, dtype=torch.float64))


@pytest.mark.parametrize("std_scope", ["prompt", "batch", "none"])
@pytest.mark.parametrize("shape_before_norm", [True, False])
def test_all_groups_flat_gives_zero_not_nan(std_scope, shape_before_norm):
    rewards = [0.1] * 4 + [0.3] * 4 + [1e6] * 4
    groups = [0] * 4 + [1] * 4 + [2] * 4
    adv = _adv(rewards, groups, std_scope=std_scope, power=2.0, shape_before_norm=shape_before_norm)
    assert torch.equal(adv, torch.zeros(12))


@pytest.mark.parametrize("std_scope", ["prompt", "batch", "none"])
def test_groups_of_one_are_zero(std_scope):
    adv = _adv([5.0, -3.0, 0.25], [0, 1, 2], std_scope=std_scope)
    assert torch.equal(adv, torch.zeros(3))
    # mixed with a real group: singletons 0, the pair +-something finite
    adv = _adv([5.0, 1.0, 2.0], [0, 1, 1], std_scope=std_scope, clip=None)
    assert torch.isfinite(adv).all()
    assert adv[0] == 0
    assert adv[1] < 0 < adv[2]


def test_single_sample_batch():
    adv = _adv([3.0], [0], std_scope="batch")
    assert torch.equal(adv, torch.zeros(1))


# --------------------------------------------------------------------------- invariants


def _random_batch(n_groups=6, g=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n_groups * g, generator=gen, dtype=torch.float64) * 0.3 + 0.5
    groups = torch.arange(n_groups).repeat_interleave(g)
    return rewards, groups


def test_batch_power1_equals_centred_over_global_std():
    rewards, groups = _random_batch()
    centred = rewards.clone()
    for k in groups.unique():
        m = groups == k
        centred[m] = rewards[m] - rewards[m].mean()
    expected = centred / centred.std(unbiased=True)
    adv = compute_advantages(rewards, groups, std_scope="batch", power=1.0, clip=None)
    assert torch.allclose(adv, expected, atol=1e-10)
    # and the batch-normalised advantages have unit unbiased std
    assert adv.std(unbiased=True).item() == pytest.approx(1.0, abs=1e-6)


def test_prompt_scope_has_unit_std_per_group():
    rewards, groups = _random_batch(seed=3)
    adv = compute_advantages(rewards, groups, std_scope="prompt", clip=None)
    for k in groups.unique():
        a = adv[groups == k]
        assert a.mean().item() == pytest.approx(0.0, abs=1e-9)
        assert a.std(unbiased=True).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("c", [1e-3, 0.5, 3.0, 1e4])
@pytest.mark.parametrize("power", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("std_scope", ["batch", "prompt"])
@pytest.mark.parametrize("shape_before_norm", [True, False])
def test_scale_invariance(c, power, clip, std_scope, shape_before_norm):
    rewards, groups = _random_batch(seed=1)
    # eps is tiny so that it stays negligible next to the std of c-scaled rewards (c down to 1e-3, power 2)
    kw = dict(std_scope=std_scope, power=power, clip=clip, shape_before_norm=shape_before_norm, eps=1e-14)
    base = compute_advantages(rewards, groups, **kw)
    scaled = compute_advantages(rewards * c, groups, **kw)
    assert torch.allclose(base, scaled, atol=1e-6)
    if c >= 0.5:  # with the default eps = 1e-8 too
        kw.pop("eps")
        assert torch.allclose(compute_advantages(rewards * c, groups, **kw), base, atol=1e-5)
    # and adding a constant to every reward changes nothing either (prompt-mean centring)
    shifted = compute_advantages(rewards + 7.0, groups, **kw)
    assert torch.allclose(base, shifted, atol=1e-6)
    if clip is not None:
        assert base.abs().max() <= clip


def test_scope_none_is_not_scale_invariant():
    rewards, groups = _random_batch(seed=2)
    a = compute_advantages(rewards, groups, std_scope="none", clip=None)
    b = compute_advantages(rewards * 3.0, groups, std_scope="none", clip=None)
    assert torch.allclose(b, 3.0 * a, atol=1e-10)


@pytest.mark.parametrize("std_scope", ["prompt", "batch", "none"])
@pytest.mark.parametrize("power", [1.0, 2.0])
@pytest.mark.parametrize("shape_before_norm", [True, False])
def test_non_finite_rewards_masked(std_scope, power, shape_before_norm):
    rewards, groups = _random_batch(n_groups=4, g=4, seed=4)
    rewards = rewards.float()
    bad_idx = torch.tensor([1, 6, 7, 12])  # two in group 1
    bad = rewards.clone()
    bad[1], bad[6], bad[7], bad[12] = float("nan"), float("inf"), float("-inf"), float("nan")
    kw = dict(std_scope=std_scope, power=power, clip=None, shape_before_norm=shape_before_norm)
    adv = compute_advantages(bad, groups, **kw)
    assert torch.isfinite(adv).all()
    assert torch.equal(adv[bad_idx], torch.zeros(4))
    keep = torch.ones(16, dtype=torch.bool)
    keep[bad_idx] = False
    ref = compute_advantages(rewards[keep], groups[keep], **kw)
    assert torch.allclose(adv[keep], ref, atol=1e-6)
    assert (adv[keep] != 0).all()


def test_group_left_with_one_finite_reward_is_zero():
    # group 0 = [nan, 1.0] -> only one valid sample -> 0; group 1 untouched
    adv = _adv([float("nan"), 1.0, 0.0, 4.0], [0, 0, 1, 1], std_scope="prompt", clip=None)
    _close(adv, [0.0, 0.0, -0.7071068, 0.7071068])
    adv = _adv([float("nan")] * 3, [0, 0, 1], std_scope="batch")
    assert torch.equal(adv, torch.zeros(3))


@pytest.mark.parametrize("std_scope", ["prompt", "batch"])
def test_group_ids_need_not_be_contiguous_or_sorted(std_scope):
    rewards, groups = _random_batch(n_groups=4, g=3, seed=5)
    ref = compute_advantages(rewards, groups, std_scope=std_scope, power=2.0)
    # relabel with arbitrary, non-contiguous ids
    labels = torch.tensor([907, -3, 42, 5])
    adv = compute_advantages(rewards, labels[groups], std_scope=std_scope, power=2.0)
    assert torch.allclose(adv, ref, atol=1e-12)
    # shuffle the batch: advantages follow their samples
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    adv_p = compute_advantages(rewards[perm], labels[groups][perm], std_scope=std_scope, power=2.0)
    assert torch.allclose(adv_p, ref[perm], atol=1e-12)


def test_interleaved_hand_example():
    # the hand example with its samples interleaved and ids 10 / 4
    rewards = [1.0, 0.0, 2.0, 4.0, 3.0, 6.0]
    groups = [10, 4, 10, 4, 10, 10]
    adv = _adv(rewards, groups, std_scope="prompt", clip=None)
    _close(adv, [-0.9258201, -0.7071068, -0.4629100, 0.7071068, 0.0, 1.3887301])


def test_dtype_and_purity():
    r = torch.tensor(REWARDS, dtype=torch.float32)
    g = torch.tensor(GROUPS)
    r_before = r.clone()
    adv = compute_advantages(r, g)
    assert adv.dtype == torch.float32
    assert adv.shape == r.shape
    assert torch.equal(r, r_before)  # input untouched
    assert compute_advantages(r.double(), g).dtype == torch.float64
    # integer rewards give float32
    assert compute_advantages(torch.tensor([1, 2, 3, 5]), torch.tensor([0, 0, 1, 1])).dtype == torch.float32
    # does not carry autograd history
    rg = r.clone().requires_grad_(True)
    assert not compute_advantages(rg, g).requires_grad


def test_bad_inputs_raise():
    r = torch.tensor(REWARDS)
    g = torch.tensor(GROUPS)
    with pytest.raises(ValueError):
        compute_advantages(r, g[:-1])
    with pytest.raises(ValueError):
        compute_advantages(r.reshape(2, 3), g.reshape(2, 3))
    with pytest.raises(ValueError):
        compute_advantages(r, g, power=0.0)
    with pytest.raises(ValueError):
        compute_advantages(r, g, power=-1.0)
    with pytest.raises(ValueError):
        compute_advantages(r, g, std_scope="group")
    with pytest.raises(ValueError):
        compute_advantages(r, g, clip=0.0)


# --------------------------------------------------------------------------- zero_std_group_ratio


def test_zero_std_group_ratio():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.2, 0.3, 0.3, 5.0, 5.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 9, 9])
    # group 0 flat, group 1 not, group 9 flat -> 2/3
    assert zero_std_group_ratio(rewards, groups) == pytest.approx(2 / 3)
    assert zero_std_group_ratio(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 1, 1])) == 0.0
    assert zero_std_group_ratio(torch.full((6,), 0.1), torch.tensor([0, 0, 1, 1, 2, 2])) == 1.0
    # a non-finite reward does not make a group informative: [1, nan] is flat, [1, 2] is not
    r = torch.tensor([1.0, math.nan, 1.0, 2.0])
    assert zero_std_group_ratio(r, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.5)
    # groups of one count as flat
    assert zero_std_group_ratio(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 1])) == pytest.approx(0.5)


def test_group_mean_std_is_nan_aware_and_unbiased():
    # groups (ids 9, 2, 5 -> dense 2, 0, 1): [1, 2, 3, 6, NaN] | [0, 4] | [7]
    values = torch.tensor([1.0, 2.0, 3.0, 6.0, float("nan"), 0.0, 4.0, 7.0], dtype=torch.float64)
    inverse, num_groups = group_index(torch.tensor([9, 9, 9, 9, 9, 2, 2, 5]))
    assert num_groups == 3 and inverse.tolist() == [2, 2, 2, 2, 2, 0, 0, 1]
    mean, std = group_mean_std(values, torch.isfinite(values), inverse, num_groups)
    _close(mean, [2.0, 7.0, 3.0])
    _close(std, [math.sqrt(8.0), 0.0, math.sqrt(14.0 / 3.0)])  # a group of one has std 0
