"""DiffusionNFT (slas.editing.nft): its pure math on hand-computed values, deterministic (eta 0) rollouts, the
config keys, and tiny FLUX runs through the real config -> trainer path under both advantage rules."""

from __future__ import annotations

import pytest
import torch

from slas.config import ConfigError, ModelConfig, SampleConfig, TrainerConfig, config_from_dict
from slas.editing.nft import (
    DiffusionNFTObjective,
    NFTUnsupported,
    draw_times,
    mixed_velocities,
    nft_policy_loss,
    nft_r,
    noised,
    old_decay,
    swapped_in,
    velocity_kl,
    x0_error,
    x0_from_velocity,
)
from slas.errors import SlasError
from slas.rewards import register
from slas.rewards.registry import unregister
from slas.rl.protocols import SamplingObjective
from slas.rl.trainer import Trainer
from slas.rl.trajectory import Rollout, Trajectory
from slas.run import build_objective, build_trainer
from slas.t2i.flux import FluxPolicy
from slas.t2i.policy import _seed_for
from slas.t2i.sde import gaussian_log_prob, sample_or_score

# ------------------------------------------------------------------------------------------- pure math


def test_r_mapping_values_and_bounds():
    a = torch.tensor([-10.0, -5.0, -2.5, 0.0, 2.5, 5.0, 10.0])
    assert nft_r(a, 5.0).tolist() == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert nft_r(torch.tensor([1.0]), 2.0).item() == pytest.approx(0.75)
    r = nft_r(torch.randn(1000) * 20, 5.0)
    assert float(r.min()) >= 0.0 and float(r.max()) <= 1.0
    assert float(r.min()) == 0.0 and float(r.max()) == 1.0  # both ends are reached


def test_forward_process_and_x0_roundtrip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    t = torch.tensor([0.1, 0.5, 1.0])
    x_t = noised(x0, eps, t)
    assert torch.allclose(x_t[1], 0.5 * x0[1] + 0.5 * eps[1]) and torch.allclose(x_t[2], eps[2])
    # the flow target velocity eps - x0 predicts x0 exactly
    assert torch.allclose(x0_from_velocity(x_t, eps - x0, t), x0, atol=1e-6)


def test_mixed_velocities_hand_values_and_gradients():
    v = torch.tensor([1.0], requires_grad=True)
    v_old = torch.tensor([3.0], requires_grad=True)
    pos, neg = mixed_velocities(v, v_old, 0.5)
    assert pos.item() == pytest.approx(0.5 * 1 + 0.5 * 3) and neg.item() == pytest.approx(1.5 * 3 - 0.5 * 1)
    (pos - 2 * neg).backward()
    assert v.grad.item() == pytest.approx(0.5 + 2 * 0.5)  # d v+/dv = beta, d v-/dv = -beta
    assert v_old.grad is None  # the old velocity is a constant
    pos1, neg1 = mixed_velocities(torch.tensor([1.0]), torch.tensor([3.0]), 1.0)  # Edit-R1's beta = 1
    assert pos1.item() == 1.0 and neg1.item() == 5.0  # v+ = v, v- = 2 v_old - v


def test_x0_error_adaptive_weighting():
    x0 = torch.zeros(2, 2)
    pred = torch.tensor([[1.0, -3.0], [2.0, 2.0]], requires_grad=True)
    # sample 0: mean sq 5, mean |.| 2 -> 2.5; sample 1: mean sq 4, mean |.| 2 -> 2
    assert x0_error(pred, x0).tolist() == pytest.approx([2.5, 2.0])
    assert x0_error(pred, x0, weighting=False).tolist() == pytest.approx([5.0, 4.0])
    x0_error(pred, x0)[0].backward()
    # the weight is held constant: d/dp mean(p^2 / 2) = p / 2
    assert pred.grad[0].tolist() == pytest.approx([0.5, -1.5])
    exact = x0_error(torch.zeros(1, 3), torch.zeros(1, 3))
    assert exact.item() == 0.0  # a perfect prediction: floor 1e-5, no 0/0


def test_policy_loss_hand_value():
    """x0 = 0, eps = 1, t = 0.5: x_t = 0.5; v = target 1, v_old = 0, beta 1: v+ = 1 predicts x0 (L+ = 0),
    v- = -1 predicts 1 (L- = 1 weighted); A = 0 -> r = 1/2; loss = 5 (0 + 1/2) / 1 = 2.5."""
    one = torch.ones(1, 1)
    t = torch.tensor([0.5])
    x_t = noised(torch.zeros(1, 1), one, t)
    loss = nft_policy_loss(one, 0 * one, x_t, torch.zeros(1, 1), t, nft_r(torch.zeros(1), 5.0), beta=1.0, adv_clip_max=5.0)
    assert loss.item() == pytest.approx(2.5)
    r1 = nft_r(torch.tensor([5.0]), 5.0)  # r = 1: the positive term alone, which is 0 here
    assert nft_policy_loss(one, 0 * one, x_t, torch.zeros(1, 1), t, r1, beta=1.0, adv_clip_max=5.0).item() == 0.0
    # beta 0.5, unweighted: v+ = 0.5, x0+ = 0.25 (L+ = 1/16); v- = -0.5, x0- = 0.75 (L- = 9/16)
    half = nft_policy_loss(one, 0 * one, x_t, torch.zeros(1, 1), t, torch.tensor([0.25]), beta=0.5, adv_clip_max=2.0,
                           x0_weighting=False)
    assert half.item() == pytest.approx(2.0 * (0.25 / 16 + 0.75 * 9 / 16) / 0.5)


def test_velocity_kl():
    v = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    assert velocity_kl(v, torch.zeros(2, 2)).tolist() == pytest.approx([2.5, 0.0])


@pytest.mark.parametrize("advantage,closer", [(5.0, True), (-5.0, False)])
def test_gradient_pulls_positive_samples_to_the_target(advantage, closer):
    """A linear 'velocity' v = W x_t, v_old = v at the start: a step on a positive-advantage sample moves v towards
    the flow target eps - x0; on a negative one, away from it."""
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    t = torch.rand(8, generator=g) * 0.8 + 0.1
    x_t = noised(x0, eps, t)
    w = torch.nn.Parameter(torch.randn(6, 6, generator=g) * 0.1)
    v_old = (x_t @ w.T).detach()
    target = eps - x0

    def error() -> float:
        return float(((x_t @ w.detach().T - target) ** 2).mean())

    before = error()
    r = nft_r(torch.full((8,), advantage), 5.0)
    nft_policy_loss(x_t @ w.T, v_old, x_t, x0, t, r, beta=1.0, adv_clip_max=5.0).mean().backward()
    with torch.no_grad():
        w -= 1e-2 * w.grad
    assert (error() < before) is closer


def test_draw_times_schedule_and_uniform():
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    timesteps = sigmas[:4] * 1000
    g = torch.Generator().manual_seed(0)
    s, ts = draw_times(sigmas, timesteps, 6, 3, "schedule", g)
    assert s.shape == (6, 3) and torch.allclose(ts, s * 1000)
    assert all(len(set(row.tolist())) == 3 and set(row.tolist()) <= set(sigmas[:4].tolist()) for row in s)
    assert len({tuple(row.tolist()) for row in s}) > 1  # a permutation per sample
    u, tu = draw_times(sigmas, timesteps, 50, 2, "uniform", g)
    assert float(u.min()) >= 0.2 and float(u.max()) <= 1.0 and torch.allclose(tu, u * 1000)
    with pytest.raises(ValueError, match="4 steps"):
        draw_times(sigmas, timesteps, 1, 5, "schedule", g)


def test_plan_refuses_a_policy_without_a_flow_schedule():
    traj = Trajectory(latents=torch.zeros(2, 3, 4), log_probs=torch.zeros(2, 2), timesteps=torch.tensor([900, 500]))
    rollout = Rollout(images=torch.zeros(2, 3, 4, 4), prompts=["a", "a"], group_ids=torch.zeros(2, dtype=torch.long),
                      trajectory=traj)

    class NoFlow:
        def model_output(self, *args, **kwargs):
            raise AssertionError("never called")

    with pytest.raises(NFTUnsupported, match="flow-matching"):
        DiffusionNFTObjective().plan(NoFlow(), rollout, torch.zeros(2), torch.Generator())
    with pytest.raises(NFTUnsupported, match="model_output"):
        DiffusionNFTObjective().plan(object(), rollout, torch.zeros(2), torch.Generator())


def test_old_decay_schedule_is_edit_r1s():
    type1 = {"flat": 0, "rate": 0.001, "cap": 0.5}
    assert [old_decay(s, **type1) for s in (0, 1, 100, 499, 500, 10_000)] == pytest.approx(
        [0.0, 0.001, 0.1, 0.499, 0.5, 0.5])
    type2 = {"flat": 75, "rate": 0.0075, "cap": 0.999}
    assert [old_decay(s, **type2) for s in (0, 74, 75, 100, 10_000)] == pytest.approx([0.0, 0.0, 0.0, 0.1875, 0.999])


def test_swapped_in_restores_even_on_error():
    p = torch.nn.Parameter(torch.ones(3))
    with swapped_in([p], [torch.zeros(3)]):
        assert p.sum().item() == 0.0
    with pytest.raises(KeyError), swapped_in([p], [torch.full((3,), 7.0)]):
        raise KeyError("boom")
    assert torch.equal(p.detach(), torch.ones(3))
    with pytest.raises(ValueError, match="cannot stand in"), swapped_in([p], [torch.zeros(3, dtype=torch.float64)]):
        pass


class _OneParam:
    """A policy stand-in with one trainable tensor (what the old-policy bookkeeping touches)."""

    def __init__(self, value: float) -> None:
        self.w = torch.nn.Parameter(torch.full((2,), value))

    def trainable_parameters(self):
        return [self.w]


def test_old_policy_lags_samples_and_round_trips():
    objective = DiffusionNFTObjective(old_decay_rate=0.01, old_decay_max=0.5)
    assert isinstance(objective, SamplingObjective)
    policy = _OneParam(1.0)
    with objective.sampling(policy):  # the run's start: old = current
        assert policy.w.tolist() == [1.0, 1.0]
    with torch.no_grad():
        policy.w.fill_(3.0)  # the iteration trained the weights
    objective.after_iteration(policy, optimizer_steps=10)  # d = 0.1: old = 0.1 * 1 + 0.9 * 3 = 2.8
    with objective.sampling(policy):
        assert policy.w.tolist() == pytest.approx([2.8, 2.8])  # rollouts sample with the old weights
    assert policy.w.tolist() == [3.0, 3.0]  # and training goes on from the trained ones
    state = objective.state_dict()
    assert state["steps"] == 10
    again = DiffusionNFTObjective(old_decay_rate=0.01, old_decay_max=0.5)
    again.load_state_dict(state)
    with again.sampling(policy):
        assert policy.w.tolist() == pytest.approx([2.8, 2.8])
    objective.after_iteration(policy, optimizer_steps=90)  # d = min(1.0, 0.5) = 0.5: old = 0.5 * 2.8 + 0.5 * 3
    with objective.sampling(policy):
        assert policy.w.tolist() == pytest.approx([2.9, 2.9])


def test_no_lag_keeps_no_copy():
    objective = DiffusionNFTObjective(old_decay_rate=0.0)
    policy = _OneParam(1.0)
    with objective.sampling(policy):
        pass
    with torch.no_grad():
        policy.w.fill_(3.0)
    objective.after_iteration(policy, optimizer_steps=5)
    with objective.sampling(policy):
        assert policy.w.tolist() == [3.0, 3.0]  # the old policy is the current one
    assert objective.state_dict() == {"steps": 5}


# ------------------------------------------------------------------------------------------- eta 0 chains


def test_zero_std_log_prob_is_zero_not_nan():
    mean = torch.randn(3, 4, requires_grad=True)
    lp = gaussian_log_prob(mean.detach() + 1, mean, torch.zeros(3))
    assert lp.tolist() == [0.0, 0.0, 0.0]
    lp.sum().backward()
    assert torch.isfinite(mean.grad).all()
    mixed = gaussian_log_prob(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    assert mixed[0].item() == 0.0 and mixed[1].item() == pytest.approx(-0.5 * torch.log(torch.tensor(2 * torch.pi)).item())
    prev, lp0 = sample_or_score(mean.detach(), torch.zeros(3, 1), None, None, torch.float32)
    assert torch.equal(prev, mean.detach()) and lp0.tolist() == [0.0, 0.0, 0.0]


def _flux_policy(path, **sample):
    cfg = dict(resolution=32, num_steps=4, group_size=2, max_sequence_length=32, eta=0.0, shift=3.0, shared_noise=False)
    cfg.update(sample)
    return FluxPolicy.from_pretrained(ModelConfig(family="flux", path=str(path)), SampleConfig(**cfg))


def test_eta_zero_rollout_is_the_pipelines_own_ode(tiny_flux_dir):
    """With eta 0 the recorded chain is the flow Euler ODE: the same images as ``generate`` from the same noise."""
    policy = _flux_policy(tiny_flux_dir)
    seed = 11
    rollout = policy.rollout(["a red circle"], group_size=2, seed=seed)
    assert torch.equal(rollout.trajectory.log_probs, torch.zeros(2, 4))
    assert torch.isfinite(rollout.trajectory.latents).all()
    images = policy.generate(["a red circle"] * 2, [_seed_for(seed, 0), _seed_for(seed, 1)])
    assert torch.allclose(rollout.images, images, atol=1e-4)
    assert not torch.allclose(images[0], images[1], atol=1e-3)  # two different noises, two different images


# ------------------------------------------------------------------------------------------- config


def _cfg(tmp_path, **over):
    """A tiny nft config; ``section=...`` replaces a section, ``section__key=...`` one key of it."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green triangle\none yellow star\n")
    cfg = {
        "run": {"name": "nft", "output_dir": str(tmp_path / "runs"), "seed": 3, "iterations": 2, "checkpoint_every": 1,
                "progress": False},
        "model": {"family": "flux", "path": "unused"},
        "data": {"prompts": str(prompts)},
        "sample": {"resolution": 32, "num_steps": 4, "group_size": 3, "prompts_per_iter": 2, "max_sequence_length": 32,
                   "eta": 0.0, "shift": 3.0},
        "rl": {"preset": "slas", "power": 2.0},
        "train": {"objective": "nft", "lr": 1e-3, "batch_size": 2, "gradient_accumulation_steps": 2,
                  "nft": {"kl_coef": 0.01}},
        "reward": {"components": [{"name": "nft_brightness"}]},
    }
    for key, value in over.items():
        section, _, leaf = key.partition("__")
        if leaf:
            cfg[section][leaf] = value
        else:
            cfg[section] = value
    return cfg


def test_config_keys_and_defaults(tmp_path):
    cfg = config_from_dict(_cfg(tmp_path))
    assert cfg.train.objective == "nft" and cfg.sample.eta == 0.0
    nft = config_from_dict(_cfg(tmp_path, train={"objective": "nft"})).train.nft
    assert (nft.beta, nft.kl_coef, nft.adv_clip_max, nft.timesteps, nft.timesteps_per_sample, nft.x0_weighting) == (
        1.0, 1e-4, 5.0, "schedule", None, True)  # Edit-R1's numbers
    assert (nft.old_decay_flat, nft.old_decay_rate, nft.old_decay_max) == (0, 0.001, 0.5)  # its decay_type 1
    assert config_from_dict(_cfg(tmp_path, train={}, sample={"eta": 1.0})).train.objective == "grpo"
    objective = build_objective(cfg.train)
    assert isinstance(objective, DiffusionNFTObjective) and objective.kl_coef == 0.01 and objective.batch_size == 2
    assert build_objective(config_from_dict(_cfg(tmp_path, train={}, sample={"eta": 1.0})).train) is None


@pytest.mark.parametrize("over,needle", [
    ({"train": {}}, "sample.eta=0"),  # grpo (the default) on a deterministic chain
    ({"model": {"family": "sd", "path": "unused"}}, "flow-matching"),
    ({"rl": {"preset": "slas", "power": "auto"}}, "rl.power=auto"),
    ({"train": {"objective": "nft", "kl_coef": 0.1}}, "train.nft.kl_coef"),
    ({"train": {"objective": "nft", "nft": {"timesteps_per_sample": 5}}}, "timesteps_per_sample=5"),
    ({"train": {"objective": "ppo"}}, "train.objective"),
    ({"sample": {"eta": -0.1}}, "sample.eta"),
    ({"train": {"objective": "nft", "nft": {"old_decay_max": 1.0}}}, "train.nft.old_decay_max"),
])
def test_config_errors_are_one_line(tmp_path, over, needle):
    data = _cfg(tmp_path)
    data.update(over)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as err:
        config_from_dict(data)
    assert "\n" not in str(err.value)


def test_trainer_config_checks_and_trainer_needs_the_objective(tmp_path):
    with pytest.raises(ValueError, match=r"sample\.eta=0"):
        TrainerConfig(sample={"eta": 0.0}, lr=1e-3, run_dir=tmp_path)
    cfg = TrainerConfig(sample={"eta": 0.0}, train={"objective": "nft"}, lr=1e-3, run_dir=tmp_path)
    with pytest.raises(SlasError, match="build_objective"):
        Trainer(cfg, policy=None, reward=None, data=None)


# ------------------------------------------------------------------------------------------- tiny runs


@pytest.fixture
def brightness():
    @register("nft_brightness")
    def factory():
        def reward(images, prompts, **_):
            return {"brightness": images.mean(dim=(1, 2, 3))}

        return reward

    yield
    unregister("nft_brightness")


def _weights(trainer):
    return [p.detach().clone() for p in trainer.policy.trainable_parameters()]


@pytest.mark.parametrize("preset", ["dancegrpo", "slas"])
def test_two_iteration_nft_run_under_either_advantage_rule(preset, tiny_flux_dir, tmp_path, brightness):
    rl = {"preset": preset} if preset == "dancegrpo" else {"preset": "slas", "power": 2.0}
    nft = {"kl_coef": 0.01, "old_decay_rate": 0.0}  # no lag: the old policy is the current one at each rollout
    cfg = config_from_dict(_cfg(tmp_path, model={"family": "flux", "path": str(tiny_flux_dir)}, rl=rl,
                                train__nft=nft))
    trainer = build_trainer(cfg)
    assert isinstance(trainer.objective, DiffusionNFTObjective)
    before = _weights(trainer)
    history = trainer.train()
    assert len(history) == 2
    for m in history:
        for key in ("loss", "policy_loss", "kl_ref", "r", "old_dev"):
            assert torch.isfinite(torch.tensor(m[key])), key
        assert m["optimizer_steps"] == 2 and m["skipped_updates"] == 0
        assert m["old_dev_before_update"] < 1e-4  # v_old is the sampling weights' velocity
        assert m["old_dev"] > 0  # the second optimizer step trains away from it
    assert history[1]["kl_ref"] > 0  # the weights left the reference
    assert any(not torch.equal(a, b) for a, b in zip(_weights(trainer), before, strict=True))


def test_lagging_old_policy_in_a_run(tiny_flux_dir, tmp_path, brightness):
    """Edit-R1's lag: after the first iteration (2 optimizer steps, d = 2 * 0.2 = 0.4) the old weights are
    0.4 theta_0 + 0.6 theta_1, the policy keeps theta_1, and the next update-0 velocity differs from v_old."""
    nft = {"kl_coef": 0.01, "old_decay_rate": 0.2}
    trainer = build_trainer(config_from_dict(_cfg(tmp_path, model={"family": "flux", "path": str(tiny_flux_dir)},
                                                  train__nft=nft)))
    theta0 = _weights(trainer)
    first = trainer.step()
    theta1 = _weights(trainer)
    assert first["old_dev_before_update"] < 1e-4  # the run starts with old = current
    for old, a, b in zip(trainer.objective._old, theta0, theta1, strict=True):
        torch.testing.assert_close(old, 0.4 * a + 0.6 * b)
    second = trainer.step()
    assert second["old_dev_before_update"] > 1e-4
    path = trainer.save_checkpoint()
    assert (path / "objective.pt").is_file()


def test_nft_resume_equals_an_uninterrupted_run(tiny_flux_dir, tmp_path, brightness):
    """With a lagging old policy, so that its checkpointed weights matter."""
    model = {"family": "flux", "path": str(tiny_flux_dir)}
    over = {"model": model, "train__nft": {"kl_coef": 0.01, "old_decay_rate": 0.2}, "run__iterations": 3}
    alone = build_trainer(config_from_dict(_cfg(tmp_path / "alone", **over)))
    initial = _weights(alone)
    alone.train()
    assert any(not torch.equal(a, b) for a, b in zip(_weights(alone), initial, strict=True))
    cut_cfg = config_from_dict(_cfg(tmp_path / "cut", **over))
    build_trainer(cut_cfg).train(2)
    resumed = build_trainer(cut_cfg, resume=True)
    assert resumed.iteration == 2
    resumed.train()
    for a, b in zip(_weights(resumed), _weights(alone), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- edit policies


def _edit_groups():
    from PIL import Image

    from slas.rl.protocols import Group

    person, product = Image.new("RGB", (40, 48), (200, 120, 90)), Image.new("RGB", (30, 20), (20, 60, 220))
    return [Group(key="p|q", prompt="The person in Figure 1 is holding the commodity in Figure 2",
                  conditions={"person_images": person, "product_images": product})]


@pytest.fixture(params=["qwen_image_edit", "flux_kontext"])
def edit_policy(request, tiny_qwen_edit_dir, tiny_kontext_dir):
    from slas.editing.kontext import KontextPolicy
    from slas.editing.qwen_edit import QwenImageEditPolicy

    family = request.param
    cls, path = {"qwen_image_edit": (QwenImageEditPolicy, tiny_qwen_edit_dir),
                 "flux_kontext": (KontextPolicy, tiny_kontext_dir)}[family]
    sample = SampleConfig(resolution=32, num_steps=4, group_size=2, eta=0.0, shared_noise=False, condition_size=32,
                          vl_condition_size=32, max_sequence_length=512 if family == "qwen_image_edit" else 32)
    model = ModelConfig(family=family, path=str(path), finetune="lora", lora={"rank": 4, "alpha": 8})
    return cls.from_pretrained(model, sample, keep_reference=True)


def test_nft_on_the_edit_policies(edit_policy):
    """Eta 0 on an edit policy is its pipeline's Euler ODE (= generate from the same noise), and DiffusionNFT
    trains its LoRA through ``model_output`` with v_old equal to the update-0 velocity."""
    groups = _edit_groups()
    rollout = edit_policy.rollout(groups, group_size=2, seed=4)
    assert torch.equal(rollout.trajectory.log_probs, torch.zeros(2, 4))
    images = edit_policy.generate(groups * 2, [_seed_for(4, 0), _seed_for(4, 1)])
    assert torch.allclose(rollout.images, images, atol=1e-4)
    objective = DiffusionNFTObjective(kl_coef=0.1, old_decay_rate=0.0, batch_size=2)
    advantages = torch.tensor([1.0, -1.0])
    plan = objective.plan(edit_policy, rollout, advantages, torch.Generator().manual_seed(0))
    assert plan.terms == 3
    terms = list(objective.losses(edit_policy, rollout, advantages, torch.arange(2), plan, update=0))
    assert len(terms) == 3
    for loss, stats in terms:
        assert torch.isfinite(loss) and stats["old_dev_before_update"] < 1e-4 and stats["kl_ref"] >= 0
    sum(loss for loss, _ in terms).backward()
    grads = [p.grad for p in edit_policy.trainable_parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
