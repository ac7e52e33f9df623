"""``rl.power: auto`` (slas.rl.power): the math against known answers, the config, and training with it."""

from __future__ import annotations

import itertools
import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from slas.config import ConfigError, TrainerConfig, load_config
from slas.rl.power import (
    AutoPower,
    choose_power,
    draw_pairs,
    fisher_top_eigenvalue,
    fisher_vector_product,
    grad_norm_bound,
    gradient_norm_sq,
    per_pair_gradients,
    power_grid,
    power_iteration,
    predicted_kl,
    unbiased_norm_sq,
)
from slas.rl.trainer import Trainer
from slas.testing.fakes import (
    DIM,
    SIGMA,
    STEPS,
    BrightnessReward,
    PairSource,
    Recorder,
    WalkPolicy,
    walk_config,
)

SD = "configs/sd14_hps_clip.yaml"


# ------------------------------------------------------------------------------------------ the math
def _psd(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_power_iteration_recovers_the_top_eigenvalue_of_a_known_matrix():
    a = _psd([5.0, 2.0, 1.0, 0.5, 0.1])
    v0 = torch.ones(5, dtype=torch.float64)
    found = power_iteration(lambda v: a @ v, v0, iters=200, tol=1e-12)
    assert found.converged and abs(found.value - 5.0) < 1e-9
    top = torch.linalg.eigh(a).eigenvectors[:, -1]
    assert abs(abs(float(found.vector @ top)) - 1) < 1e-6
    # a few steps: a lower bound that rises towards lambda_max; the step limit is kept
    short = power_iteration(lambda v: a @ v, v0, iters=2, tol=1e-12)
    assert short.iterations == 2 and not short.converged and 2.0 < short.value <= 5.0
    # the tolerance stops early
    loose = power_iteration(lambda v: a @ v, v0, iters=200, tol=1e-2)
    assert loose.converged and loose.iterations < found.iterations and abs(loose.value - 5.0) < 0.1
    # a zero operator is 0, not a division by zero
    assert power_iteration(lambda v: torch.zeros_like(v), v0).value == 0.0
    with pytest.raises(ValueError):
        power_iteration(lambda v: v, torch.zeros(3))


def test_fisher_vector_product_is_the_empirical_fisher_times_v():
    jac = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fisher = sum(torch.outer(j, j) for j in jac) / 7
    assert torch.allclose(fisher_vector_product(jac, v), fisher @ v)
    lam = power_iteration(lambda x: fisher_vector_product(jac, x), torch.ones(4, dtype=torch.float64), iters=500, tol=1e-14)
    assert abs(lam.value - float(torch.linalg.eigvalsh(fisher)[-1])) < 1e-9
    # the dual form the trainer iterates (u <- J J^T u / m) has the same top eigenvalue
    dual = fisher_top_eigenvalue(jac @ jac.T, iters=500, tol=1e-14, generator=torch.Generator().manual_seed(0))
    assert dual.converged and abs(dual.value - lam.value) < 1e-9


def test_fisher_of_a_linear_gaussian_policy_matches_its_closed_form():
    """x ~ N(W c, sigma^2 I_d): the score w.r.t. W is (x - W c) c^T / sigma^2, so the Fisher of vec(W) is
    E[c c^T] (x) I_d / sigma^2 and lambda_max = lambda_max(E[c c^T]) / sigma^2 (here 4 / 0.25 = 16)."""
    d, sigma = 2, 0.5
    w = torch.nn.Parameter(torch.randn(d, 2, generator=torch.Generator().manual_seed(3)))
    r = math.sqrt(2.0)
    contexts = torch.tensor([[2 * r, 0.0], [0.0, r], [-2 * r, 0.0], [0.0, -r]])  # E[c c^T] = diag(4, 1)
    gen = torch.Generator().manual_seed(4)
    m = 4000
    cs = contexts[torch.arange(m) % 4]
    xs = cs @ w.detach().T + sigma * torch.randn(m, d, generator=gen)

    def log_prob(i: int, _step: int) -> torch.Tensor:
        return torch.distributions.Normal(w @ cs[i], sigma).log_prob(xs[i]).sum()

    jac = per_pair_gradients(log_prob, [(i, 0) for i in range(m)], [w])
    assert w.grad is None  # the trainer's gradient accumulator is never touched
    exact = torch.linalg.eigvalsh(jac.T.double() @ jac.double() / m)[-1]
    found = power_iteration(lambda v: fisher_vector_product(jac, v), torch.ones(jac.shape[1]), iters=100, tol=1e-7)
    assert abs(found.value - float(exact)) < 1e-3 * float(exact)  # the empirical Fisher's own top eigenvalue
    assert abs(found.value - 16.0) < 0.1 * 16.0  # and the closed form, up to sampling (4000 draws, 4 parameters)


def test_fisher_of_the_walk_policy_matches_its_closed_form():
    """The fakes' walk: x' ~ N(x + mu / T, sigma^2 I), log-prob averaged over the DIM coordinates, so
    grad_mu log p = (x' - mean) / (DIM T sigma^2) and F = I / (DIM T sigma)^2 (every eigenvalue 1/36)."""
    policy = WalkPolicy()
    rollout = policy.rollout(["a"] * 50, group_size=8, seed=0)
    pairs = [(i, s) for i in range(rollout.trajectory.num_samples) for s in range(STEPS)]
    jac = per_pair_gradients(lambda i, s: policy.step_log_prob(rollout.trajectory, torch.tensor([i]), s).sum(), pairs,
                             policy.trainable_parameters())
    found = power_iteration(lambda v: fisher_vector_product(jac, v), torch.ones(DIM), iters=100, tol=1e-8)
    closed = 1 / (DIM * STEPS * SIGMA) ** 2
    # 2000 draws in 4 dimensions: the sample covariance's top eigenvalue is at most ~(1 + sqrt(4/2000))^2 high
    assert closed * 0.95 < found.value < closed * 1.15


def _population(n: int = 6, dim: int = 5, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(n, dim, generator=gen, dtype=torch.float64) + 1.5  # a common direction: estimates stay > 0
    weights = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    return grads, weights


def test_gradient_norm_is_exact_on_the_whole_population_and_unbiased_on_samples():
    grads, a = _population()
    n = len(a)
    truth = float(((a[:, None] * grads).sum(0) / n).norm() ** 2)
    assert abs(gradient_norm_sq(grads @ grads.T, a, n) - truth) < 1e-12
    estimates = []
    for subset in itertools.combinations(range(n), 3):  # every simple random sample of 3: its mean is the truth
        s = torch.tensor(subset)
        estimates.append(gradient_norm_sq(grads[s] @ grads[s].T, a[s], n))
    assert min(estimates) > 0  # no estimate was floored, so the mean is the plain estimator's
    assert abs(sum(estimates) / len(estimates) - truth) < 1e-12
    # the plug-in norm of the sample mean is biased: it counts each sample's own noise at m, not n, pairs
    plug_in = [float(((a[s, None] * grads[s]).sum(0) / 3).norm() ** 2) for s in map(torch.tensor, itertools.combinations(range(n), 3))]
    assert sum(plug_in) / len(plug_in) > truth * 1.01
    assert unbiased_norm_sq(-5.0, -5.0, 3, n) == 0.0  # a squared norm is never negative
    with pytest.raises(ValueError):
        unbiased_norm_sq(1.0, 0.0, 7, n)


def test_the_rule_takes_the_largest_admissible_power_or_the_least_violation():
    grid = power_grid(1.0, 3.0, 5)
    assert grid == [1.0, 1.5, 2.0, 2.5, 3.0] and power_grid(2.0, 2.0, 9) == [2.0]
    assert choose_power(grid, [1, 2, 3, 4, 5], 3.5) == (2, 2)  # KL rising with p: the bound cuts at 2.0
    assert choose_power(grid, [5, 4, 3, 2, 1], 3.5) == (4, 4)  # falling: p_max is admissible
    assert choose_power(grid, [1, 9, 1, 9, 9], 2.0) == (2, 2)  # not monotone: the largest admissible one
    assert choose_power(grid, [9, 8, 7, 8, 9], 1.0) == (2, None)  # none admissible: the least violation
    assert choose_power(grid, [9, 7, 8, 7, 9], 1.0) == (3, None)  # a tie: the larger power
    # the bound on ||g|| is where the predicted KL meets the budget
    g_max = grad_norm_bound(0.3, 0.05, 2e-4)
    assert abs(predicted_kl(0.3, 0.05, g_max) - 2e-4) < 1e-15 and grad_norm_bound(0.3, 0.0, 2e-4) == math.inf


def test_pairs_are_distinct_trained_steps():
    gen = torch.Generator().manual_seed(0)
    pairs, population = draw_pairs(6, 10, 0.5, "random", 12, gen)
    assert population == 6 * 4 and len(set(pairs)) == 12
    assert all(0 <= i < 6 and 0 <= s < 9 for i, s in pairs)  # the last step is never trained
    first, population = draw_pairs(3, 10, 0.3, "first", 100, gen)  # more asked than there are: all of them
    assert population == 6 and sorted(first) == [(i, s) for i in range(3) for s in range(2)]


# ----------------------------------------------------------------------------------------- the config
def test_config_accepts_auto_and_its_settings():
    cfg = load_config(SD, ["rl.power=auto", "rl.auto_power.every=5", "rl.auto_power.p_max=2.5"])
    assert cfg.rl.power == "auto" and cfg.rl.std_scope == "batch"
    assert cfg.rl.auto_power.every == 5 and cfg.rl.auto_power.p_max == 2.5 and cfg.rl.auto_power.kl_budget is None
    custom = load_config(SD, ["rl.preset=custom", "rl.std_scope=none", "rl.power=auto"])
    assert custom.rl.power == "auto" and custom.rl.std_scope == "none"
    assert load_config(SD, ["rl.power=2.5"]).rl.power == 2.5


@pytest.mark.parametrize(("overrides", "message"), [
    (["rl.power=auto", "rl.preset=dancegrpo"], "rl.power=auto needs rl.preset=slas or custom (dancegrpo always uses power 1)"),
    (["rl.power=fast"], "rl.power: 'fast' is neither a number > 0 nor 'auto'"),
    (["rl.power=true"], "rl.power: True is neither a number > 0 nor 'auto'"),
    (["rl.power=-1"], "rl.power: must be a finite number > 0 or 'auto', got -1"),
    (["rl.power=.nan"], "rl.power: must be a finite number > 0 or 'auto', got nan"),
    (["rl.power=auto", "rl.auto_power.p_max=0.5"], "rl.auto_power: p_max=0.5 is below p_min=1"),
    (["rl.auto_power.every=0"], "rl.auto_power.every: Input should be greater than or equal to 1"),
    (["rl.auto_power.pairs=1"], "rl.auto_power.pairs: Input should be greater than or equal to 2"),
    (["rl.auto_power.kl_budget=0"], "rl.auto_power.kl_budget: Input should be greater than 0"),
    (["rl.auto_power.steps=3"], "rl.auto_power.steps: unknown key"),
])
def test_config_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as exc:
        load_config(SD, overrides)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_defaults_come_from_the_run(tmp_path):
    """Step = learning rate x optimizer steps per iteration; budget = clip_range^2 / 2."""
    auto = AutoPower.from_config(_auto_config(tmp_path))
    # walk_config: 2 groups x 6 = 12 samples, batch 4 -> 3 optimizer steps of lr 0.05; clip 0.2
    assert abs(auto.step - 0.15) < 1e-12 and abs(auto.kl_budget - 0.02) < 1e-12
    assert auto.candidates == power_grid(1.0, 3.0, 9)


# -------------------------------------------------------------------------------------------- training
def _auto_config(tmp_path, **auto) -> TrainerConfig:
    """The fakes' walk run with ``rl.power: auto``; norm-first shaping, where ||g(p)|| grows with p, so a
    budget can bind."""
    base = walk_config(tmp_path).model_dump()
    base["rl"] = {"preset": "slas", "power": "auto", "shape_before_norm": False, "auto_power": auto}
    return TrainerConfig.model_validate(base)


def _weights(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.policy.trainable_parameters()])


def test_auto_power_logs_a_power_within_its_range_every_iteration(tmp_path):
    cfg = _auto_config(tmp_path, kl_budget=3e-6, every=3, p_min=1.0, p_max=3.0, candidates=9)
    trainer = Trainer(cfg, WalkPolicy(), BrightnessReward(), PairSource())
    history = trainer.train(8)
    keys = {"rl/power", "rl/power_bound", "rl/fisher_lambda_max", "rl/grad_norm", "rl/grad_norm_bound", "rl/kl_predicted"}
    assert all(keys <= m.keys() for m in history)
    powers = [m["rl/power"] for m in history]
    assert all(1.0 <= p <= 3.0 for p in powers) and len(set(powers)) > 1, powers  # the bound binds sometimes
    for m in history:
        if math.isnan(m["rl/power_bound"]):  # nothing admissible: the least violation
            assert m["rl/kl_predicted"] > 3e-6
        else:
            assert m["rl/power"] == m["rl/power_bound"] and m["rl/kl_predicted"] <= 3e-6
            assert m["rl/grad_norm"] <= m["rl/grad_norm_bound"] * (1 + 1e-9)
    # lambda_max is estimated every 3 iterations and held in between
    estimated = [i for i, m in enumerate(history) if "rl/fisher_iterations" in m]
    assert estimated == [0, 3, 6]
    lam = [m["rl/fisher_lambda_max"] for m in history]
    assert lam[0] == lam[1] == lam[2] and lam[3] == lam[4] == lam[5] and lam[2] != lam[3]
    assert all(m["time/auto_power"] > 0 for m in history)


def test_auto_power_changes_nothing_but_the_power(tmp_path):
    """With p_min = p_max = 2 the run is the fixed-power run bit for bit: the estimate draws from its own
    generator and never touches the gradients the trainer accumulates."""
    fixed_cfg = TrainerConfig.model_validate({**walk_config(tmp_path / "fixed").model_dump(),
                                              "rl": {"preset": "slas", "power": 2.0, "shape_before_norm": False}})
    fixed = Trainer(fixed_cfg, WalkPolicy(), BrightnessReward(), PairSource())
    auto = Trainer(_auto_config(tmp_path / "auto", p_min=2.0, p_max=2.0), WalkPolicy(), BrightnessReward(), PairSource())
    a, b = fixed.train(4), auto.train(4)
    assert torch.equal(_weights(fixed), _weights(auto))
    assert [m["reward/total/mean"] for m in a] == [m["reward/total/mean"] for m in b]
    assert all(m["rl/power"] == 2.0 for m in b)


def test_resume_picks_the_same_powers_as_a_run_left_alone(tmp_path):
    """lambda_max is held between estimates (every 3), so a run stopped at 4 must bring it back from the
    checkpoint: iterations 5-6 then choose as the uninterrupted run did, and end on the same weights."""
    settings = {"kl_budget": 3e-6, "every": 3}
    alone = Trainer(_auto_config(tmp_path / "alone", **settings), WalkPolicy(), BrightnessReward(), PairSource())
    whole = alone.train(6)

    first = Trainer(_auto_config(tmp_path / "cut", **settings), WalkPolicy(), BrightnessReward(), PairSource(),
                    callbacks=[Recorder(stop_at=4)])
    first.train(6)
    assert first.stopped and first.iteration == 4
    state = json.loads((first.ckpt_dir / "iter_000004" / "trainer_state.json").read_text())
    assert state["auto_power"] == {"lambda_max": whole[3]["rl/fisher_lambda_max"], "estimated_at": 3}
    resumed = Trainer(_auto_config(tmp_path / "cut", **settings), WalkPolicy(), BrightnessReward(), PairSource())
    resumed.load_checkpoint()
    rest = resumed.train(6)
    for key in ("rl/power", "rl/fisher_lambda_max", "rl/grad_norm", "reward/total/mean"):
        assert [m[key] for m in rest] == [m[key] for m in whole[4:]], key
    assert torch.equal(_weights(resumed), _weights(alone))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from pathlib import Path

        trainer = Trainer(_auto_config(Path(tmp), kl_budget=3e-6), WalkPolicy(), BrightnessReward(), PairSource())
        history = trainer.train(3)
        torch.save({"powers": [m["rl/power"] for m in history], "weights": _weights(trainer)}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_pick_the_same_power(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    assert r0["powers"] == r1["powers"] and torch.equal(r0["weights"], r1["weights"])
