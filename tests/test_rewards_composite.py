"""Weighted composites: raw weighted sum (the paper) and per-group z-scoring."""

from __future__ import annotations

import pytest
import torch

from slas.rewards import build
from slas.rewards.registry import group_zscore, register, unregister


@pytest.fixture(autouse=True)
def two_rewards():
    @register("test_big")
    def big():  # a large-scale component
        return lambda images, prompts, **_: {"big": 100 * images.mean(dim=(1, 2, 3))}

    @register("test_multi")
    def multi():  # a reward with two outputs
        return lambda images, prompts, **_: {"a": images[:, 0].mean(dim=(1, 2)), "b": images[:, 1].mean(dim=(1, 2))}

    yield
    unregister("test_big")
    unregister("test_multi")


def test_weighted_sum_and_per_output_weights():
    images = torch.rand(4, 3, 8, 8)
    out = build({"components": [{"name": "test_big", "weight": 0.5},
                                {"name": "test_multi", "weight": {"a": 2.0, "b": -1.0}}]})(images, ["p"] * 4)
    assert set(out) == {"test_big", "test_multi/a", "test_multi/b", "total"}
    expected = 0.5 * out["test_big"] + 2.0 * out["test_multi/a"] - out["test_multi/b"]
    torch.testing.assert_close(out["total"], expected)


def test_group_zscore_balances_scales_and_keeps_raw_components():
    images = torch.rand(6, 3, 8, 8)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    spec = {"normalize": "group_zscore", "components": [{"name": "test_big", "weight": 1.0},
                                                        {"name": "test_multi", "weight": {"a": 1.0, "b": 0.0}}]}
    out = build(spec)(images, ["p"] * 6, group_ids=groups)
    z_big, z_a = group_zscore(out["test_big"], groups), group_zscore(out["test_multi/a"], groups)
    torch.testing.assert_close(out["total"], z_big + z_a)
    for g in (0, 1):
        m = groups == g
        assert abs(float(z_big[m].mean())) < 1e-5 and float(z_big[m].std()) == pytest.approx(1.0, abs=1e-4)
    assert float(out["test_big"].abs().max()) > 5  # components are reported raw
    with pytest.raises(ValueError, match="group_ids"):
        build(spec)(images, ["p"] * 6)


def test_group_zscore_flat_groups_and_nan():
    v = torch.tensor([1.0, 1.0, 1.0, 0.0, float("nan"), 2.0])
    z = group_zscore(v, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert z[:3].tolist() == [0.0, 0.0, 0.0]
    assert torch.isnan(z[4]) and z[3] == pytest.approx(-0.7071, abs=1e-3) and z[5] == pytest.approx(0.7071, abs=1e-3)


def test_wrong_length_output_is_an_error():
    @register("test_short")
    def short():
        return lambda images, prompts, **_: {"s": torch.zeros(1)}

    try:
        with pytest.raises(ValueError, match="returned 1 values for 3 images"):
            build({"components": [{"name": "test_short"}]})(torch.rand(3, 3, 4, 4), ["p"] * 3)
    finally:
        unregister("test_short")
