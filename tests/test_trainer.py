"""Tiny end-to-end training runs (SD and FLUX) through the real config -> preflight -> trainer path."""

from __future__ import annotations

import json

import pytest
import torch

from slas.config import config_from_dict
from slas.platform.tracking import JsonlTracker, read_metrics
from slas.rewards import register
from slas.rewards.registry import unregister
from slas.rl.checkpoint import MARKER, latest_checkpoint, list_checkpoints, save_checkpoint
from slas.rl.loss import ppo_clip_loss
from slas.rl.objectives import trained_steps
from slas.run import build_trainer


@pytest.fixture(autouse=True)
def brightness_reward():
    """A test-only reward: mean brightness, plus a redness component."""

    @register("test_brightness")
    def factory(scale: float = 1.0):
        def reward(images, prompts, **_):
            return {"brightness": scale * images.mean(dim=(1, 2, 3)), "redness": images[:, 0].mean(dim=(1, 2))}

        return reward

    yield
    unregister("test_brightness")


def tiny_config(kind, path, tmp_path, **over):
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green triangle\none yellow star\n")
    cfg = {
        "run": {"name": f"tiny_{kind}", "output_dir": str(tmp_path / "runs"), "seed": 3, "iterations": 2,
                "checkpoint_every": 1, "progress": False},
        "model": {"family": kind, "path": str(path)},
        "data": {"prompts": str(prompts)},
        "sample": {"resolution": 32, "num_steps": 4, "group_size": 3, "prompts_per_iter": 2,
                   "max_sequence_length": 32, "eta": 1.0 if kind == "sd" else 0.5,
                   "shift": None if kind == "sd" else 3.0},
        "rl": {"preset": "slas", "power": 2.0},
        "train": {"lr": 1e-3, "clip_range": 0.2, "batch_size": 2, "gradient_accumulation_steps": 2,
                  "timestep_fraction": 1.0},
        "reward": {"components": [{"name": "test_brightness", "weight": 1.0}]},
    }
    for key, value in over.items():
        section, _, leaf = key.partition("__")
        cfg[section][leaf] = value
    return config_from_dict(cfg)


@pytest.mark.parametrize("kind", ["sd", "flux"])
def test_two_iteration_run_updates_and_reloads(kind, tiny_sd_dir, tiny_flux_dir, tmp_path):
    path = {"sd": tiny_sd_dir, "flux": tiny_flux_dir}[kind]
    cfg = tiny_config(kind, path, tmp_path)
    trainer = build_trainer(cfg)
    before = [p.detach().clone() for p in trainer.policy.trainable_parameters()]
    history = trainer.train()
    assert len(history) == 2 and trainer.iteration == 2
    first = history[0]
    # the importance ratio is 1 before the first optimizer step of every iteration
    assert all(m["ratio_dev_before_update"] < 1e-4 for m in history)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in history)
    for key in ("reward/total/mean", "reward/test_brightness/brightness/mean", "reward/test_brightness/redness/std",
                "zero_std_group_ratio", "adv/mean_abs", "adv/max_abs", "adv/frac_gt1", "clip_frac",
                "approx_kl", "grad_norm", "time/iteration", "images_per_sec"):
        assert key in first, key
    assert first["optimizer_steps"] == 2  # 6 samples / (2 per micro-batch * 2 micro-batches) -> 2 steps
    after = trainer.policy.trainable_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))

    # metrics went through the tracker, once per step
    recs = read_metrics(cfg.run_dir / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2]
    assert json.loads((cfg.run_dir / "params.json").read_text())["rl.std_scope"] == "batch"

    # checkpoints every iteration, complete; the newest reloads into a fresh trainer
    assert [p.name for p in list_checkpoints(cfg.run_dir / "checkpoints")] == ["iter_000001", "iter_000002"]
    fresh = build_trainer(cfg, resume=True)
    assert fresh.iteration == 2
    assert fresh.data.state_dict() == trainer.data.state_dict()
    for a, b in zip(fresh.policy.trainable_parameters(), after, strict=True):
        assert torch.equal(a, b)
    assert fresh.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()


def test_lora_kl_and_ema_run(tiny_flux_dir, tmp_path):
    cfg = tiny_config("flux", tiny_flux_dir, tmp_path, model__finetune="lora", train__kl_coef=0.1,
                      train__ema={"enabled": True, "decay": 0.9}, train__timestep_fraction=0.5,
                      train__timestep_selection="random")
    trainer = build_trainer(cfg)
    metrics = trainer.step()
    assert metrics["ratio_dev_before_update"] < 1e-4
    assert "kl_ref" in metrics and metrics["kl_ref"] >= 0
    assert trainer.ema is not None
    path = trainer.save_checkpoint()
    assert (path / "trainable" / "pytorch_lora_weights.safetensors").is_file() and (path / "ema.pt").is_file()


def test_dancegrpo_and_slas_see_the_same_rollout(tiny_sd_dir, tmp_path):
    """Same seeds -> same images and rewards; only the advantages differ between presets."""
    out = {}
    for preset in ("dancegrpo", "slas"):
        power = {"dancegrpo": None, "slas": 2.0}[preset]  # dancegrpo is power 1; naming another is an error
        cfg = tiny_config("sd", tiny_sd_dir, tmp_path / preset, rl__preset=preset, rl__power=power)
        out[preset] = build_trainer(cfg).step()
    assert out["dancegrpo"]["reward/total/mean"] == out["slas"]["reward/total/mean"]
    assert out["dancegrpo"]["adv/max_abs"] != out["slas"]["adv/max_abs"]


def test_trained_steps_rules():
    g = torch.Generator().manual_seed(0)
    assert trained_steps(50, 1.0, 4, "first", g).shape == (4, 49)
    assert trained_steps(50, 1.0, 4, "first", g)[0].tolist() == list(range(49))
    r = trained_steps(16, 0.6, 5, "random", g)
    assert r.shape == (5, 9) and int(r.max()) <= 14
    assert all(len(set(row.tolist())) == 9 for row in r)  # no step twice per sample
    assert not all(torch.equal(r[0], r[i]) for i in range(1, 5))  # a permutation per sample
    assert trained_steps(3, 0.1, 1, "random", g).shape == (1, 1)


def test_ppo_clip_loss():
    adv = torch.tensor([1.0, -1.0, 2.0])
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5]))
    loss, st = ppo_clip_loss(new, old, adv, 0.2)
    # per sample max(-A r, -A clip(r)): -1*1.2 -> max(-1.5, -1.2) = -1.2; +1.5 vs +1.2 -> 1.5; -1.0 vs -1.6 -> -1.0
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 1.0) / 3)
    assert st["clip_frac"].item() == pytest.approx(1.0)
    loss1, st1 = ppo_clip_loss(old.clone().requires_grad_(), old, adv, 1e-4)
    assert loss1.item() == pytest.approx(-adv.mean().item()) and st1["ratio_dev"].item() == 0


def test_checkpoint_is_atomic(tmp_path):
    def write(d):
        (d / "w.txt").write_text("ok")

    save_checkpoint(tmp_path, 1, write)

    def broken(d):
        (d / "w.txt").write_text("half")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, broken)
    # a leftover directory without the marker (e.g. after SIGKILL) is ignored too
    (tmp_path / "iter_000003").mkdir()
    assert latest_checkpoint(tmp_path).name == "iter_000001"
    assert (latest_checkpoint(tmp_path) / MARKER).read_text() == "1"
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_jsonl_tracker_never_duplicates_steps(tmp_path):
    t = JsonlTracker(tmp_path)
    t.log_metrics({"a": 1.0}, step=1)
    t.log_metrics({"a": 2.0}, step=1)
    t.close()
    t = JsonlTracker(tmp_path)  # a resumed run
    t.log_metrics({"a": 3.0}, step=1)
    t.log_metrics({"a": float("nan")}, step=2)
    t.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["a"]) for r in recs] == [(1, 1.0), (2, None)]


def test_nonfinite_rewards_are_masked_and_counted(tiny_sd_dir, tmp_path):
    @register("test_sometimes_nan")
    def factory():
        def reward(images, prompts, **_):
            v = images.mean(dim=(1, 2, 3)).clone()
            v[0] = float("nan")
            return {"v": v}

        return reward

    try:
        cfg = tiny_config("sd", tiny_sd_dir, tmp_path)
        cfg.reward.components[0].name = "test_sometimes_nan"
        metrics = build_trainer(cfg).step()
    finally:
        unregister("test_sometimes_nan")
    assert metrics["reward/nonfinite"] == 1
    assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_a_batch_without_any_finite_reward_does_not_move_the_weights(tiny_sd_dir, tmp_path):
    """A remote judge down for a whole batch: the update is skipped and counted, not an AdamW step on zero
    gradients (which would still move the weights through momentum and weight decay)."""
    calls = []

    @register("test_down_then_up")
    def factory():
        def reward(images, prompts, **_):
            calls.append(1)
            v = images.mean(dim=(1, 2, 3)).clone()
            return {"v": v if len(calls) == 1 else torch.full_like(v, float("nan"))}

        return reward

    try:
        cfg = tiny_config("sd", tiny_sd_dir, tmp_path, train__weight_decay=0.1)
        cfg.reward.components[0].name = "test_down_then_up"
        trainer = build_trainer(cfg)
        first = trainer.step()
        before = [p.detach().clone() for p in trainer.policy.trainable_parameters()]
        second = trainer.step()
    finally:
        unregister("test_down_then_up")
    assert first["optimizer_steps"] == 2 and first["skipped_updates"] == 0
    assert second["reward/nonfinite"] == 6
    assert second["optimizer_steps"] == 0 and second["skipped_updates"] == 2  # 6 samples / 2 per batch / 2 accum
    for a, b in zip(trainer.policy.trainable_parameters(), before, strict=True):
        assert torch.equal(a, b)
