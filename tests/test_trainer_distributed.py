"""Two CPU ranks (gloo) train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from slas.config import config_from_dict
from slas.rewards.registry import register, unregister


def _config(model_dir: str, tmp: str, prompts_per_iter: int, name: str) -> dict:
    return {
        "run": {"name": name, "output_dir": f"{tmp}/runs", "seed": 5, "iterations": 1, "checkpoint_every": 1,
                "progress": False},
        "model": {"family": "sd", "path": model_dir},
        "data": {"prompts": f"{tmp}/prompts.txt"},
        "sample": {"resolution": 32, "num_steps": 4, "group_size": 3, "prompts_per_iter": prompts_per_iter},
        "rl": {"preset": "slas", "power": 2.0},
        # one optimizer step per iteration on every layout; "first" steps: no per-rank permutation
        "train": {"lr": 1e-3, "batch_size": 3, "gradient_accumulation_steps": 8, "timestep_selection": "first"},
        "reward": {"components": [{"name": "test_dist_brightness"}]},
    }


def _register() -> None:
    @register("test_dist_brightness")
    def factory():
        return lambda images, prompts, **_: {"b": images.mean(dim=(1, 2, 3))}


def _worker(rank: int, world: int, port: int, model_dir: str, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from slas.run import build_trainer

        _register()
        trainer = build_trainer(config_from_dict(_config(model_dir, tmp, 1, "ranks")))
        metrics = trainer.train()[0]
        weights = torch.cat([p.detach().flatten() for p in trainer.policy.trainable_parameters()])
        torch.save({"metrics": metrics, "weights": weights}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_process(tiny_sd_dir, tmp_path):
    (tmp_path / "prompts.txt").write_text("a red circle\ntwo blue squares\na green star\n")
    mp.spawn(_worker, args=(2, _free_port(), str(tiny_sd_dir), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    assert torch.equal(r0["weights"], r1["weights"])  # averaged gradients: every rank takes the same step

    from slas.run import build_trainer

    _register()
    try:
        single = build_trainer(config_from_dict(_config(str(tiny_sd_dir), str(tmp_path), 2, "single")))
        before = torch.cat([p.detach().flatten().clone() for p in single.policy.trainable_parameters()])
        m = single.train()[0]
    finally:
        unregister("test_dist_brightness")
    weights = torch.cat([p.detach().flatten() for p in single.policy.trainable_parameters()])
    # the same global batch: same images, rewards and (batch-std) advantages
    for key in ("reward/total/mean", "reward/total/std", "adv/mean_abs", "adv/max_abs", "zero_std_group_ratio"):
        assert abs(m[key] - r0["metrics"][key]) < 1e-5, key
    assert abs(m["loss"] - r0["metrics"]["loss"]) < 1e-5
    # the averaged gradient is the single process's gradient (its norm, before clipping, to 1e-4)
    assert abs(m["grad_norm"] - r0["metrics"]["grad_norm"]) <= 1e-4 * m["grad_norm"]
    assert ((weights - before).abs() > 0).any()
    # Adam's first step is about lr * sign(g): only near-zero gradient entries, whose sign depends on the
    # summation order, may step differently
    close = (weights - r0["weights"]).abs() <= 1e-6
    assert close.float().mean() > 0.95
    recs = [json.loads(x) for x in (tmp_path / "runs" / "ranks" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1]  # rank 0 alone writes
