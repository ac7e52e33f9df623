"""The trainer against its protocols alone: a fake Gaussian-walk policy, a fake reward, a fake data source.

No diffusers model anywhere: what passes here is what any policy/reward/objective that keeps the
protocols of ``slas.rl.protocols`` gets from the trainer.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator

import torch

from slas.rl.checkpoint import list_checkpoints
from slas.rl.objectives import GRPOObjective
from slas.rl.protocols import DataSource, Objective, ObjectivePlan, Policy, RewardFn
from slas.rl.trainer import Trainer
from slas.testing.fakes import (
    STEPS,
    BrightnessReward,
    ListTracker,
    PairSource,
    Recorder,
    WalkPolicy,
    walk_config,
)


def test_fakes_keep_the_protocols():
    assert isinstance(WalkPolicy(), Policy)
    assert isinstance(PairSource(), DataSource)
    assert isinstance(BrightnessReward(), RewardFn)
    assert isinstance(GRPOObjective(), Objective)


def test_training_raises_the_reward_with_hooks_in_order(tmp_path):
    policy, reward, tracker, rec = WalkPolicy(), BrightnessReward(), ListTracker(), Recorder()
    trainer = Trainer(walk_config(tmp_path), policy, reward, PairSource(), tracker=tracker, callbacks=[rec],
                      checkpoint_metadata={"note": "kept"})
    history = trainer.train()
    rewards = [m["reward/total/mean"] for m in history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.05, rewards
    assert float(policy.mu.detach()[0]) > 0.3  # the drift of the rewarded channel went up
    assert all(m["ratio_dev_before_update"] < 1e-6 for m in history)
    # diagnostics every iteration (2 groups per iteration: too few for a rank correlation, which is NaN)
    assert all(m["diag/group_std/p50"] > 0 and m["diag/amplification/mean"] > 0 for m in history)
    assert all(math.isnan(m["diag/amplification_vs_std"]) for m in history)
    # callbacks: begin, then per iteration step -> log (-> checkpoint every 4), then end
    assert rec.events[0] == ("begin", 0) and rec.events[-1] == ("end", 12)
    assert [e for e in rec.events if e[0] == "checkpoint"] == [("checkpoint", 4), ("checkpoint", 8), ("checkpoint", 12)]
    assert rec.events[1:4] == [("step", 1), ("log", 1), ("step", 2)]
    # what on_step_end returned is in the same step's metrics; grids go with checkpoints
    assert [s for s, _ in tracker.metrics] == list(range(1, 13))
    assert all(m["eval/extra"] == s for s, m in tracker.metrics)
    assert tracker.images == [("samples/rollout", 4), ("samples/rollout", 8), ("samples/rollout", 12)]
    # the reward got group ids and the groups' own conditions; groups are items, not prompt texts
    first = reward.calls[0]
    assert first["group_ids"].tolist() == [0] * 6 + [1] * 6
    assert first["target"] == [0.0] * 6 + [1.0] * 6
    assert (tmp_path / "run" / "checkpoints" / "iter_000012" / "trainer_state.json").read_text().count('"kept"') == 1


def test_groups_with_one_prompt_text_stay_separate(tmp_path):
    """Editing's fixed instruction: every group has the same text; advantages still compare within a group."""
    policy, reward = WalkPolicy(), BrightnessReward()
    trainer = Trainer(walk_config(tmp_path), policy, reward, PairSource())
    rollout = policy.rollout(trainer.data.next(2), group_size=6, seed=0)
    assert len(set(rollout.prompts)) == 1 and sorted(set(rollout.keys)) == ["item-0", "item-1"]
    metrics = trainer.step()
    assert metrics["zero_std_group_ratio"] == 0.0 and math.isfinite(metrics["adv/mean_abs"])


def test_stop_checkpoints_and_resume_continues_the_data(tmp_path):
    policy, source = WalkPolicy(), PairSource()
    trainer = Trainer(walk_config(tmp_path), policy, BrightnessReward(), source, callbacks=[Recorder(stop_at=5)])
    trainer.train()
    assert trainer.stopped and trainer.iteration == 5
    assert [p.name for p in list_checkpoints(trainer.ckpt_dir)] == ["iter_000004", "iter_000005"]
    fresh = Trainer(walk_config(tmp_path), WalkPolicy(), BrightnessReward(), PairSource())
    fresh.load_checkpoint()
    assert fresh.iteration == 5 and fresh.data.state_dict() == source.state_dict()
    assert torch.equal(fresh.policy.mu, policy.mu)


class CountingObjective(GRPOObjective):
    """A second objective plugged in without touching the loop: GRPO's terms, counted."""

    def __init__(self) -> None:
        super().__init__(clip_range=0.2)
        self.terms = 0

    def losses(self, policy, rollout, advantages, indices, plan: ObjectivePlan, *, update: int) -> Iterator:
        for loss, stats in super().losses(policy, rollout, advantages, indices, plan, update=update):
            self.terms += 1
            yield loss, {**stats, "counted": 1.0}


def test_an_objective_plugs_in(tmp_path):
    objective = CountingObjective()
    trainer = Trainer(walk_config(tmp_path), WalkPolicy(), BrightnessReward(), PairSource(), objective=objective)
    metrics = trainer.step()
    # 3 micro-batches of 4 samples x (STEPS - 1) trained steps (the last step is never trained)
    assert objective.terms == 3 * (STEPS - 1)
    assert metrics["counted"] == 1.0 and metrics["optimizer_steps"] == 3.0


def test_kl_to_the_reference_is_logged(tmp_path):
    cfg = walk_config(tmp_path).model_copy(update={"train": walk_config(tmp_path).train.model_copy(update={"kl_coef": 0.1})})
    trainer = Trainer(cfg, WalkPolicy(), BrightnessReward(), PairSource())
    trainer.step()
    metrics = trainer.step()  # after one update the policy moved away from the reference
    assert metrics["kl_ref"] > 0


def test_the_engine_imports_no_model_or_platform_library():
    code = ("import sys, slas.rl.trainer, slas.rl.objectives, slas.rl.callbacks; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'transformers', 'mlflow', "
            "'sqlalchemy', 'open_clip', 'peft', 'typer'}); print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
