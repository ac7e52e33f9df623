"""Assemble a training run from a config: preflight, policy, reward, prompts, tracker, trainer."""

from __future__ import annotations

import yaml

from slas.config import SLASConfig, flatten
from slas.platform.tracking import JsonlTracker
from slas.preflight import preflight
from slas.rewards import build
from slas.rl import distributed
from slas.rl.trainer import Trainer
from slas.t2i.flux import FluxPolicy
from slas.t2i.prompts import PromptSampler, load_prompts
from slas.t2i.sd import SDPolicy

POLICIES = {"sd": SDPolicy, "flux": FluxPolicy}


def build_trainer(config: SLASConfig, *, resume: bool = False) -> Trainer:
    """Check everything the run needs, then load models (the heavy part) and wire the trainer."""
    rank, _ = distributed.init_from_env()
    preflight(config)
    prompts = PromptSampler(load_prompts(config.data.prompts, config.data.field), shuffle=config.data.shuffle, seed=config.run.seed)
    reward = build(config.reward)
    policy = POLICIES[config.model.family].from_pretrained(
        config.model, config.sample, keep_reference=config.train.kl_coef > 0
    )
    tracker = None
    if rank == 0:  # one writer per run
        run_dir = config.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        tracker = JsonlTracker(run_dir)
        tracker.log_params(flatten(config))
    trainer = Trainer(config, policy, reward, prompts, tracker)
    if resume:
        trainer.load_checkpoint()
    return trainer
