"""A training worker for the data-parallel tests, run under a real launcher:

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 \\
        -m slas.testing.parallel CONFIG.json OUT_DIR

It trains the run config (JSON) with the test reward :data:`REWARD` (mean brightness), then rank 0 saves
the last global batch (rewards, advantages, group ids), the metrics and the weights it checkpointed. After
that every rank overwrites its trainable weights with zeros and resumes from that checkpoint, and rank 0
saves the weights it then holds: a checkpoint written under a strategy is read back under it.
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


def main(config_path: str, out: str) -> None:
    from slas.config import config_from_dict
    from slas.run import build_trainer

    torch.set_num_threads(1)
    register_reward()
    out_dir = Path(out)
    trainer = build_trainer(config_from_dict(json.loads(Path(config_path).read_text())))
    metrics = trainer.train()[-1]
    weights = full_weights(trainer)
    batch = trainer.last_batch
    if trainer.rank == 0:
        torch.save({"metrics": metrics, "rewards": batch.rewards, "advantages": batch.advantages,
                    "group_ids": batch.group_ids, "weights": weights, "strategy": trainer.strategy.name,
                    "world": trainer.world}, out_dir / "trained.pt")
    with torch.no_grad():
        for p in trainer.policy.trainable_parameters():
            p.zero_()
    trainer.load_checkpoint()
    resumed = full_weights(trainer)
    if trainer.rank == 0:
        torch.save({"weights": resumed}, out_dir / "resumed.pt")
    trainer.tracker and trainer.tracker.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
