"""Editing runs end to end on tiny offline models: pairs file -> preflight -> edit policy -> MLLM judge and
person-preservation rewards -> GRPO or DiffusionNFT, per policy; and an editing job killed with SIGKILL
resumes to the weights of an uninterrupted one."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from slas.config import config_from_dict
from slas.editing.nft import DiffusionNFTObjective
from slas.platform.db import open_store
from slas.platform.jobs import pid_alive
from slas.rl.checkpoint import latest_checkpoint
from slas.rl.objectives import GRPOObjective
from slas.run import build_trainer
from slas.testing.cli import run_cli as slas
from slas.testing.jobs import kill_after_checkpoint, submitted_id, trainable_weights, wait_finished
from slas.testing.tiny_edit import write_tiny_pairs

SAMPLE = {"resolution": 32, "num_steps": 4, "group_size": 2, "prompts_per_iter": 2, "condition_size": 32,
          "vl_condition_size": 32}


def edit_config(family: str, model_dir: Path, judge_dir: Path, pairs: Path, out: Path, objective: str) -> dict:
    sample = dict(SAMPLE, max_sequence_length=512 if family == "qwen_image_edit" else 32,
                  eta=0.0 if objective == "nft" else 0.7)
    train = {"lr": 1e-3, "batch_size": 2, "gradient_accumulation_steps": 2, "objective": objective}
    if objective == "grpo":
        train["clip_range"] = 0.2
    return {
        "run": {"name": f"edit_{family}_{objective}", "output_dir": str(out), "seed": 1, "iterations": 2,
                "checkpoint_every": 1, "progress": False},
        "model": {"family": family, "path": str(model_dir), "finetune": "lora",
                  "lora": {"rank": 4, "alpha": 8, "target_modules": ["to_q", "to_v"]}},
        "data": {"pairs": str(pairs), "min_image_size": 32},
        "sample": sample,
        "rl": {"preset": "slas", "power": 2.0},
        "train": train,
        "reward": {"components": [
            {"name": "mllm_judge", "weight": {"presence": 1.0, "similarity": 1.0, "interaction": 1.0},
             "options": {"model": str(judge_dir), "device": "cpu"}},
            {"name": "person_preservation", "weight": 0.5},
        ]},
    }


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return write_tiny_pairs(tmp_path_factory.mktemp("pairs"), persons=2, products=3)


@pytest.mark.parametrize("objective", ["grpo", "nft"])
@pytest.mark.parametrize("family", ["qwen_image_edit", "flux_kontext"])
def test_two_iteration_editing_run(family, objective, pairs_file, tiny_qwen_edit_dir, tiny_kontext_dir, tiny_qwen_vl,
                                   tmp_path):
    model_dir = {"qwen_image_edit": tiny_qwen_edit_dir, "flux_kontext": tiny_kontext_dir}[family]
    cfg = config_from_dict(edit_config(family, model_dir, tiny_qwen_vl, pairs_file, tmp_path, objective))
    trainer = build_trainer(cfg)
    assert isinstance(trainer.objective, {"grpo": GRPOObjective, "nft": DiffusionNFTObjective}[objective])
    before = [p.detach().clone() for p in trainer.policy.trainable_parameters()]
    history = trainer.train()
    assert len(history) == 2
    for m in history:
        for key in ("presence", "similarity", "interaction"):
            assert 0 <= m[f"reward/mllm_judge/{key}/mean"] <= 1
        assert 0 <= m["reward/person_preservation/mean"] <= 1
        assert m["reward/nonfinite"] == 0 and m["skipped_updates"] == 0
        if objective == "grpo":
            assert m["ratio_dev_before_update"] < 1e-4
    after = trainer.policy.trainable_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert latest_checkpoint(cfg.run_dir / "checkpoints").name == "iter_000002"


def test_editing_groups_come_from_the_train_split(pairs_file, tiny_kontext_dir, tiny_qwen_vl, tmp_path):
    cfg = config_from_dict(edit_config("flux_kontext", tiny_kontext_dir, tiny_qwen_vl, pairs_file, tmp_path, "grpo"))
    trainer = build_trainer(cfg)
    seen = {g.key for _ in range(4) for g in trainer.data.next(2)}
    assert seen == {f"persons/person{p}.png|products/product{q}.png" for p in range(2) for q in range(2)}


def test_sigkilled_editing_job_resumes_to_the_uninterrupted_weights(pairs_file, tiny_kontext_dir, tiny_qwen_vl,
                                                                     tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = edit_config("flux_kontext", tiny_kontext_dir, tiny_qwen_vl, pairs_file, Path("runs"), "grpo")
    cfg["reward"]["components"] = cfg["reward"]["components"][1:]  # person_preservation alone: a fast job
    (tmp_path / "edit.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    n = 6
    sets = ["--set", f"run.iterations={n}", "--set", "run.checkpoint_every=1"]
    ref = submitted_id(slas("jobs", "submit", "edit.yaml", *sets, "--set", "run.name=left_alone"))
    victim = submitted_id(slas("jobs", "submit", "edit.yaml", *sets, "--set", "run.name=killed"))
    store = open_store()
    try:
        killed_at = int(kill_after_checkpoint(store, victim, 2).name[5:])
        assert 2 <= killed_at < n, "the job finished before it could be killed"
        assert slas("jobs", "resume", str(victim)).exit_code == 0
        vjob, rjob = wait_finished(store, victim), wait_finished(store, ref)
        assert vjob.status == rjob.status == "completed"
    finally:
        for j in store.list_jobs():
            if j.pid and pid_alive(j.pid):
                os.killpg(j.pid, signal.SIGKILL)
        store.close()
    final = f"checkpoints/iter_{n:06d}"
    a = trainable_weights(Path(rjob.run_dir) / final)
    b = trainable_weights(Path(vjob.run_dir) / final)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=key)
