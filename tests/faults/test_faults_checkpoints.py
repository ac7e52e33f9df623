"""Checkpoint faults injected by the tests themselves (truncated files, planted pickles, diverging training), and
what the tool does about them: nothing runs from a checkpoint, damage is named and skipped, NaN never ships.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from slas.errors import SlasError
from slas.rl.checkpoint import (
    MANIFEST,
    CheckpointDamaged,
    list_checkpoints,
    remove_orphans,
    verify_checkpoint,
)
from slas.rl.trainer import Trainer, TrainingDiverged
from slas.testing.fakes import BrightnessReward, PairSource, WalkPolicy, walk_config


def _trained(tmp_path: Path, iterations: int = 3) -> Trainer:
    trainer = Trainer(walk_config(tmp_path, iterations=iterations, checkpoint_every=1), WalkPolicy(), BrightnessReward(),
                      PairSource())
    trainer.train()
    return trainer


def _fresh(tmp_path: Path) -> Trainer:
    return Trainer(walk_config(tmp_path), WalkPolicy(), BrightnessReward(), PairSource())


class _Exploit:
    """A pickle that, when unpickled, creates a file (standing in for any command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path, *, refresh_manifest: bool) -> None:
    with path.open("wb") as fh:
        pickle.dump({"torch": _Exploit(marker)}, fh)
    if refresh_manifest:  # an attacker who also rewrites the manifest
        from slas.rl.checkpoint import write_manifest

        write_manifest(path.parent)


@pytest.mark.parametrize("refresh_manifest", [False, True])
def test_a_planted_pickle_never_runs_on_resume(tmp_path, refresh_manifest):
    trainer = _trained(tmp_path)
    newest = list_checkpoints(trainer.ckpt_dir)[-1]
    marker = tmp_path / "pwned"
    _plant(newest / "rng.pt", marker, refresh_manifest=refresh_manifest)
    fresh = _fresh(tmp_path)
    with pytest.warns(RuntimeWarning, match=r"iter_000003 is damaged .*rng\.pt"):
        path = fresh.load_checkpoint()
    assert not marker.exists()
    assert path.name == "iter_000002" and fresh.iteration == 2


def test_ema_state_reloads_without_unpickling(tmp_path):
    cfg = walk_config(tmp_path, iterations=2, checkpoint_every=1)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"ema": cfg.train.ema.model_copy(update={"enabled": True})})})
    trainer = Trainer(cfg, WalkPolicy(), BrightnessReward(), PairSource())
    trainer.train()
    fresh = Trainer(cfg, WalkPolicy(), BrightnessReward(), PairSource())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback: the newest checkpoint loads as written
        assert fresh.load_checkpoint().name == "iter_000002"
    assert torch.equal(fresh.ema.shadow_params[0], trainer.ema.shadow_params[0])


@pytest.mark.parametrize("victim", ["trainable/mu.safetensors", "optimizer.pt", "trainer_state.json"])
def test_a_truncated_file_is_named_and_the_previous_checkpoint_used(tmp_path, victim):
    trainer = _trained(tmp_path)
    newest = list_checkpoints(trainer.ckpt_dir)[-1]
    f = newest / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointDamaged, match=victim.replace(".", r"\.") + ": .* bytes"):
        verify_checkpoint(newest)
    fresh = _fresh(tmp_path)
    with pytest.warns(RuntimeWarning, match=victim.rpartition("/")[2].replace(".", r"\.")):
        assert fresh.load_checkpoint().name == "iter_000002"
    previous = Trainer(walk_config(tmp_path / "other"), WalkPolicy(), BrightnessReward(), PairSource())
    previous.load_checkpoint(list_checkpoints(trainer.ckpt_dir)[-2])
    assert torch.equal(fresh.policy.mu, previous.policy.mu)


def test_damage_without_a_manifest_still_falls_back(tmp_path):
    """Checkpoints from before manifests: a load error is the damage report."""
    trainer = _trained(tmp_path)
    newest = list_checkpoints(trainer.ckpt_dir)[-1]
    (newest / MANIFEST).unlink()
    (newest / "trainer_state.json").write_text('{"iteration": 3, "data": ')
    with pytest.warns(RuntimeWarning, match=r"trainer_state|JSONDecodeError"):
        assert _fresh(tmp_path).load_checkpoint().name == "iter_000002"


def test_every_checkpoint_damaged_is_one_line(tmp_path):
    trainer = _trained(tmp_path, iterations=1)
    (list_checkpoints(trainer.ckpt_dir)[-1] / "optimizer.pt").write_bytes(b"")
    with pytest.raises(CheckpointDamaged) as err:
        _fresh(tmp_path).load_checkpoint()
    assert isinstance(err.value, SlasError) and "\n" not in str(err.value)
    assert "optimizer.pt" in str(err.value) and str(err.value).startswith("cannot resume")


def test_orphaned_temp_checkpoints_are_removed(tmp_path):
    trainer = _trained(tmp_path, iterations=1)
    orphan = trainer.ckpt_dir / ".tmp-iter_000002-abc123"
    (orphan / "trainable").mkdir(parents=True)
    keep = trainer.ckpt_dir / "notes"
    keep.mkdir()
    assert remove_orphans(trainer.ckpt_dir) == [orphan]
    assert not orphan.exists() and keep.exists() and len(list_checkpoints(trainer.ckpt_dir)) == 1


def test_a_non_finite_gradient_skips_the_update_and_counts_it(tmp_path):
    trainer = Trainer(walk_config(tmp_path), WalkPolicy(), BrightnessReward(), PairSource())
    before = trainer.policy.mu.detach().clone()
    trainer.policy.mu.register_hook(lambda g: torch.full_like(g, float("nan")))
    metrics = trainer.step()
    assert metrics["skipped_updates"] == 3.0  # 12 samples, 4 per optimizer step: every step skipped
    assert metrics["optimizer_steps"] == 0.0
    assert torch.equal(trainer.policy.mu.detach(), before)


def test_weights_that_turn_non_finite_stop_the_run_without_a_checkpoint(tmp_path):
    trainer = Trainer(walk_config(tmp_path, checkpoint_every=1), WalkPolicy(), BrightnessReward(), PairSource())
    trainer.train(iterations=1)
    trainer.optimizer.param_groups[0]["lr"] = float("inf")  # the next update turns the weights to inf/NaN
    with pytest.raises(TrainingDiverged, match="non-finite"):
        trainer.train(iterations=2)
    assert [p.name for p in list_checkpoints(trainer.ckpt_dir)] == ["iter_000001"]
    state = json.loads((trainer.ckpt_dir / "iter_000001" / "trainer_state.json").read_text())
    assert state["iteration"] == 1
