"""``rl.power: auto`` (slas.rl.power and its Adam step model, slas.rl.adam_replay): the math against known answers, the config, and training with it."""

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
from slas.rl.adam_replay import AutoPowerError, adam_step, cross_fitted_adam_kl, step_kl
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


# ------------------------------------------------------------------------------- the Adam step model
def _tiny() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    return list(net.parameters())


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def _real_steps(params, optimizer, grad: torch.Tensor, updates: int) -> torch.Tensor:
    """The weight change that ``updates`` real ``optimizer.step()`` calls on ``grad`` make; the weights and the
    optimizer's state are put back afterwards."""
    import copy

    weights, state = _flat(params), copy.deepcopy(optimizer.state_dict())
    for _ in range(updates):
        offset = 0
        for p in params:
            p.grad = grad[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        optimizer.step()
    delta = _flat(params) - weights
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(weights[offset : offset + p.numel()].view_as(p))
            p.grad = None
            offset += p.numel()
    optimizer.load_state_dict(state)
    return delta


@pytest.mark.parametrize(("make", "updates"), [
    (lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1), 1),
    (lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1), 3),
    (lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-3), 2),  # coupled decay
    (lambda ps: torch.optim.AdamW(ps, lr=1e-2, amsgrad=True), 2),
    (lambda ps: torch.optim.AdamW([{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-3, "weight_decay": 0.0}], lr=1e-2), 1),
])
def test_adam_step_replays_torch_from_no_state_and_from_existing_state(make, updates):
    params = _tiny()
    optimizer = make(params)
    size = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(1)
    for history in range(4):  # first with no state (Adam's first step ~ lr * sign(g)), then with state
        grad = torch.randn(size, generator=gen) * 10 ** (history - 2)
        predicted = adam_step(grad, params, optimizer, updates)
        real = _real_steps(params, optimizer, grad, updates)
        assert torch.allclose(predicted, real, rtol=1e-4, atol=1e-7), (history, (predicted - real).abs().max())
        if history == 0:  # no state yet: lr * g / (|g| + eps) per coordinate, up to the weight decay
            assert not optimizer.state
        for p in params:  # one real step on a fresh gradient: the next round predicts from existing state
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
        for p in params:
            p.grad = None
    assert all(int(optimizer.state[p]["step"]) == 4 for p in params)


def test_the_adam_kl_is_the_fisher_quadratic_form_of_real_adamw_steps():
    """Cross-fitted: half A's gradient makes a real AdamW step, measured as 1/2 D^T F_B D on half B's explicit
    Fisher, and the other way round; averaged. For the first step (no state) and a step from existing state."""
    params = _tiny()
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2)
    size = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(2)
    jac = torch.randn(10, size, generator=gen)
    a = torch.randn(10, generator=gen)
    for _ in range(2):
        found, norm = cross_fitted_adam_kl(jac, a, params, optimizer, 1)
        expected, norms = 0.0, []
        for own, other in ((slice(0, 5), slice(5, 10)), (slice(5, 10), slice(0, 5))):
            delta = _real_steps(params, optimizer, -(jac[own].T @ a[own]) / 5, 1).double()
            fisher = jac[other].T.double() @ jac[other].double() / 5
            expected += 0.5 * float(delta @ fisher @ delta) / 2
            norms.append(float(delta.norm()))
            assert abs(step_kl(jac[other], delta.float()) - 0.5 * float(delta @ fisher @ delta)) < 1e-5 * float(delta @ fisher @ delta)
        assert abs(found - expected) < 1e-4 * expected and abs(norm - sum(norms) / 2) < 1e-4 * norm
        for p in params:  # a real step: the second round predicts from existing state
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
    # U updates on the same gradient move further than one
    assert cross_fitted_adam_kl(jac, a, params, optimizer, 3)[0] > 2 * cross_fitted_adam_kl(jac, a, params, optimizer, 1)[0]


def test_the_adam_model_refuses_what_it_cannot_replay():
    params = _tiny()
    settings = TrainerConfig.model_fields["rl"].annotation.model_fields["auto_power"].default
    auto = AutoPower(settings.model_copy(update={"step_model": "adam"}), step=0.1, kl_budget=1e-3,
                     timestep_fraction=1.0, timestep_selection="random")
    for optimizer, message in [
        (torch.optim.SGD(params, lr=0.1), "rl.auto_power.step_model=adam needs a torch Adam/AdamW optimizer, got SGD; "
                                          "set rl.auto_power.step_model=sgd"),
        (torch.optim.AdamW(params[:2], lr=0.1), "does not hold the policy's trainable parameters themselves"),
        (torch.optim.AdamW(params, lr=0.1, maximize=True), "a maximizing optimizer is not modelled"),
    ]:
        with pytest.raises(AutoPowerError) as exc:
            auto.attach(optimizer, params)
        assert message in str(exc.value) and "\n" not in str(exc.value)
    policy = WalkPolicy()  # never attached: choose says so rather than guessing a step
    rollout = policy.rollout(["a"], group_size=4, seed=0)
    with pytest.raises(AutoPowerError, match="never attached"):
        auto.choose(policy, rollout.trajectory, lambda p: torch.ones(4), 0, iteration=0, seed=0)
    # unset: adam where it can replay the optimizer, sgd where it cannot
    unset = AutoPower(settings, step=0.1, kl_budget=1e-3, timestep_fraction=1.0, timestep_selection="random")
    unset.attach(torch.optim.SGD(params, lr=0.1), params)
    assert unset.step_model == "sgd"
    unset.attach(torch.optim.AdamW(params, lr=0.1), params)
    assert unset.step_model == "adam"


def test_the_rule_binds_on_the_adam_prediction():
    """With Adam state built by earlier steps, a larger gradient makes a larger step, and norm-first shaping
    makes g(p) grow with p: a budget between the KLs predicted at p_min and p_max cuts p below p_max."""
    from slas.rl.advantages import compute_advantages

    policy = WalkPolicy()
    params = policy.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=0.05)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):  # history of small gradients
        params[0].grad = 0.01 * torch.randn(params[0].shape, generator=gen)
        optimizer.step()
    params[0].grad = None
    rollout = policy.rollout(["a", "b", "c"], group_size=6, seed=1)
    rewards = torch.randn(18, generator=gen)

    def advantages(p: float) -> torch.Tensor:
        return compute_advantages(rewards, rollout.group_ids, std_scope="batch", power=p, clip=None, eps=1e-8,
                                  shape_before_norm=False)

    settings = TrainerConfig.model_fields["rl"].annotation.model_fields["auto_power"].default
    loose = AutoPower(settings, step=0.05, kl_budget=1.0, timestep_fraction=1.0, timestep_selection="random")
    loose.attach(optimizer, params)
    power, out = loose.choose(policy, rollout.trajectory, advantages, 0, iteration=0, seed=4)
    low, high = out["rl/kl_predicted_p_min"], out["rl/kl_predicted_p_max"]
    # under Adam the size of g moves the step little (here ~10%), but it does move it
    assert power == 3.0 and out["rl/step_model_adam"] == 1.0 and 0 < low < high, out
    tight = AutoPower(settings, step=0.05, kl_budget=math.sqrt(low * high), timestep_fraction=1.0,
                      timestep_selection="random")
    tight.attach(optimizer, params)
    power, out = tight.choose(policy, rollout.trajectory, advantages, 0, iteration=0, seed=4)
    assert 1.0 <= power < 3.0 and out["rl/power_bound"] == power and out["rl/kl_predicted"] <= math.sqrt(low * high)
    assert "rl/grad_norm_bound" not in out and out["rl/step_norm"] > 0  # the sgd bound on ||g|| means nothing here


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
    (["rl.auto_power.step_model=newton"], "rl.auto_power.step_model: Input should be 'adam' or 'sgd'"),
])
def test_config_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as exc:
        load_config(SD, overrides)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_defaults_come_from_the_run(tmp_path):
    """Step = learning rate x optimizer steps per iteration; budget = clip_range^2 / 2."""
    auto = AutoPower.from_config(_auto_config(tmp_path))
    # walk_config: 2 groups x 6 = 12 samples, batch 4 -> 3 optimizer steps of lr 0.05; clip 0.2
    assert abs(auto.step - 0.15) < 1e-12 and abs(auto.kl_budget - 0.02) < 1e-12 and auto.updates == 3
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
    cfg = _auto_config(tmp_path, kl_budget=3e-6, every=3, p_min=1.0, p_max=3.0, candidates=9, step_model="sgd")
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


def test_the_adam_prediction_is_the_size_of_the_real_change(tmp_path):
    """Default step model (the trainer's AdamW): the predicted KL of each iteration is compared with the KL the
    trainer's real weight change makes, 1/2 D^T F D with the walk's closed-form Fisher F = I / (DIM T sigma)^2
    (every transition's log-prob is linear-Gaussian in the drift, so this is exact). The sgd model's figure on
    the same run is 14-100x smaller (it takes lr * g, not Adam's ~lr per coordinate)."""
    cfg = _auto_config(tmp_path, every=3)
    trainer = Trainer(cfg, WalkPolicy(), BrightnessReward(), PairSource())
    sgd = AutoPower.from_config(_auto_config(tmp_path / "sgd", step_model="sgd"))
    fisher = 1 / (DIM * STEPS * SIGMA) ** 2
    ratios = []
    for _ in range(4):
        before = _weights(trainer)
        m = trainer.step()
        delta = _weights(trainer) - before
        real = 0.5 * fisher * float(delta @ delta)
        assert m["rl/step_model_adam"] == 1.0 and "rl/grad_norm_bound" not in m
        assert m["rl/power"] == 3.0 and m["rl/kl_predicted"] < trainer.auto_power.kl_budget  # default budget: loose
        ratios.append(m["rl/kl_predicted"] / real)
        assert predicted_kl(sgd.step, m["rl/fisher_lambda_max"], m["rl/grad_norm"]) < real / 10
    assert all(0.5 < r < 2 for r in ratios), ratios  # measured: 0.93, 1.22, 0.75, 0.95


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


@pytest.mark.parametrize("step_model", ["sgd", "adam"])  # adam: the choice also reads the checkpointed Adam state
def test_resume_picks_the_same_powers_as_a_run_left_alone(tmp_path, step_model):
    """lambda_max is held between estimates (every 3), so a run stopped at 4 must bring it back from the
    checkpoint: iterations 5-6 then choose as the uninterrupted run did, and end on the same weights."""
    settings = {"kl_budget": 3e-6 if step_model == "sgd" else 2.5e-4, "every": 3, "step_model": step_model}
    alone = Trainer(_auto_config(tmp_path / "alone", **settings), WalkPolicy(), BrightnessReward(), PairSource())
    whole = alone.train(6)
    assert len({m["rl/power"] for m in whole}) > 1  # the bound binds, not always alike

    first = Trainer(_auto_config(tmp_path / "cut", **settings), WalkPolicy(), BrightnessReward(), PairSource(),
                    callbacks=[Recorder(stop_at=4)])
    first.train(6)
    assert first.stopped and first.iteration == 4
    state = json.loads((first.ckpt_dir / "iter_000004" / "trainer_state.json").read_text())
    assert state["auto_power"] == {"lambda_max": whole[3]["rl/fisher_lambda_max"], "estimated_at": 3}
    resumed = Trainer(_auto_config(tmp_path / "cut", **settings), WalkPolicy(), BrightnessReward(), PairSource())
    resumed.load_checkpoint()
    rest = resumed.train(6)
    for key in ("rl/power", "rl/fisher_lambda_max", "rl/grad_norm", "rl/kl_predicted", "reward/total/mean"):
        assert [m[key] for m in rest] == [m[key] for m in whole[4:]], key
    assert torch.equal(_weights(resumed), _weights(alone))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str, step_model: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from pathlib import Path

        trainer = Trainer(_auto_config(Path(tmp), kl_budget=3e-6, step_model=step_model), WalkPolicy(), BrightnessReward(),
                          PairSource())
        history = trainer.train(3)
        torch.save({"powers": [m["rl/power"] for m in history], "weights": _weights(trainer)}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("step_model", ["sgd", "adam"])
def test_ranks_pick_the_same_power(tmp_path, step_model):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), step_model), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    assert r0["powers"] == r1["powers"] and torch.equal(r0["weights"], r1["weights"])
