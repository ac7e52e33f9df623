"""A training worker for the data-parallel tests, run under a real launcher:

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 \\
        -m slas.testing.parallel OUT_DIR CONFIG.json [CONFIG.json ...]

It trains each run config (JSON) in turn with the test reward :data:`REWARD` (mean brightness), then rank 0
saves the last global batch (rewards, advantages, group ids), the metrics and the weights, as
``OUT_DIR/trained_<i>.pt``. After that every rank overwrites its trainable weights with zeros and resumes
from the checkpoint the run wrote, and rank 0 saves the weights it then holds (``resumed_<i>.pt``): a
checkpoint written under a strategy is read back under it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REWARD = "test_parallel_brightness"


def register_reward() -> None:
    """The test reward: mean image brightness (deterministic, differentiable by nothing)."""
    from slas.rewards.registry import available, register

    if REWARD in available():
        return

    @register(REWARD)
    def factory():
        return lambda images, prompts, **_: {"brightness": images.mean(dim=(1, 2, 3))}


def full_weights(trainer) -> dict[str, torch.Tensor]:
    """The trainable module's full weights (gathered when sharded; every rank takes part), on rank 0."""
    state = trainer.strategy.trainable_state(trainer.policy)
    if state is None:
        state = trainer.policy.trainable_module().state_dict()
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


def main(out: str, *config_paths: str) -> None:
    torch.set_num_threads(1)
    register_reward()
    for i, config_path in enumerate(config_paths):
        train_and_resume(Path(config_path), Path(out), i)


def train_and_resume(config_path: Path, out_dir: Path, i: int) -> None:
    from slas.config import config_from_dict
    from slas.run import build_trainer

    trainer = build_trainer(config_from_dict(json.loads(config_path.read_text())))
    metrics = trainer.train()[-1]
    weights = full_weights(trainer)
    batch = trainer.last_batch
    if trainer.rank == 0:
        torch.save({"metrics": metrics, "rewards": batch.rewards, "advantages": batch.advantages,
                    "group_ids": batch.group_ids, "weights": weights, "strategy": trainer.strategy.name,
                    "world": trainer.world}, out_dir / f"trained_{i}.pt")
    with torch.no_grad():
        for p in trainer.policy.trainable_parameters():
            p.zero_()
    trainer.load_checkpoint()
    resumed = full_weights(trainer)
    if trainer.rank == 0:
        torch.save({"weights": resumed}, out_dir / f"resumed_{i}.pt")
    if trainer.tracker is not None:
        trainer.tracker.close()
    from slas.platform.rundir import release_run_dir

    release_run_dir(trainer.run_dir)


if __name__ == "__main__":
    main(*sys.argv[1:])
