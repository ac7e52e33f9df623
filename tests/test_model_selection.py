"""Model selection does not trust the training reward: with an evaluation configured, the registry's ``best`` alias
and ``slas.score`` follow the held-out evaluation; scores of different metrics are never compared as numbers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from slas.config import config_from_dict
from slas.platform.tracking import SCORE_TAG, MLflowTracker, make_tracker
from slas.platform.tracking.registry import SCORE_METRIC_TAG
from slas.rl.checkpoint import save_checkpoint
from slas.run import SCORE_METRIC, register_final_checkpoint, selection_metric

EVAL = "eval/geneval/overall"


def _checkpoint(root: Path, iteration: int) -> Path:
    return save_checkpoint(root / "checkpoints", iteration, lambda d: (d / "trainable.safetensors").write_bytes(b"w"))


def _best(client: MlflowClient, name: str) -> int:
    return int(client.get_model_version_by_alias(name, "best").version)


def test_a_held_out_score_takes_best_from_a_reward_and_is_never_displaced_by_one(tmp_path, session_mlflow_uri):
    name = f"selection-{tmp_path.name}"
    tracker = MLflowTracker(tmp_path / "run", tracking_uri=session_mlflow_uri, run_name=name)
    client = MlflowClient(session_mlflow_uri)
    steps = [  # (score metric, score, the version that holds `best` after registering it)
        (SCORE_METRIC, 0.9, 1),
        (EVAL, 0.2, 2),  # held-out evidence beats any training reward
        (SCORE_METRIC, 0.99, 2),  # a higher reward does not take it back
        (EVAL, 0.1, 2),
        (EVAL, 0.3, 5),  # held-out scores compete among themselves
        ("eval/unigenbench/overall", 0.9, 5),  # another benchmark's scale: not compared, best stays
    ]
    for i, (metric, score, best) in enumerate(steps, 1):
        version = tracker.register_model(name, _checkpoint(tmp_path / "run", i), score=score,
                                         tags={SCORE_METRIC_TAG: metric})
        assert version == i and _best(client, name) == best, (i, metric, score)
    tracker.close()
    assert client.get_model_version(name, "3").tags[SCORE_TAG] == "0.99"


def _trainer(run_dir: Path, name: str, uri: str) -> SimpleNamespace:
    """What register_final_checkpoint reads of a trainer: its tracker, run dir, checkpoints and run name."""
    tracker = make_tracker(run_dir, params=None, run_name=name, tracking_uri=uri, mlflow=True)
    return SimpleNamespace(tracker=tracker, run_dir=run_dir, ckpt_dir=run_dir / "checkpoints",
                           config=SimpleNamespace(run=SimpleNamespace(name=name)))


@pytest.mark.parametrize(("evaluated", "best_after_iteration_4"), [(True, 1), (False, 2)])
def test_a_run_whose_reward_rises_while_its_evaluation_falls(tmp_path, session_mlflow_uri, evaluated,
                                                             best_after_iteration_4):
    """Iteration 2: reward 0.3, held-out 0.8; iteration 4: reward 0.6, held-out 0.5 (the reward is being gamed).
    With an evaluation configured the later checkpoint does not become `best`; on the reward alone it would."""
    name = f"gamed-{evaluated}-{tmp_path.name}"
    trainer = _trainer(tmp_path / "run", name, session_mlflow_uri)
    metric = EVAL if evaluated else SCORE_METRIC
    client = MlflowClient(session_mlflow_uri)
    for iteration, reward, held_out in ((2, 0.3, 0.8), (4, 0.6, 0.5)):
        trainer.tracker.log_metrics({SCORE_METRIC: reward, EVAL: held_out}, step=iteration)
        _checkpoint(trainer.run_dir, iteration)
        version = register_final_checkpoint(trainer, score_metric=metric)
        tags = client.get_model_version(name, str(version)).tags
        assert tags[SCORE_METRIC_TAG] == metric and tags["slas.iteration"] == str(iteration)
        assert float(tags[SCORE_TAG]) == (held_out if evaluated else reward)
    assert _best(client, name) == best_after_iteration_4
    trainer.tracker.close()


def test_the_selection_metric_is_the_evaluation_when_one_is_configured(tmp_path):
    base = {"run": {"output_dir": str(tmp_path)}, "model": {"family": "sd", "path": "x"}, "data": {"prompts": "p.txt"},
            "reward": {"components": [{"name": "clip"}]}}
    assert selection_metric(config_from_dict(base)) == SCORE_METRIC == "reward/total/mean"
    assert selection_metric(config_from_dict(base, ["eval.every=5"])) == EVAL
    assert config_from_dict(base).run.register_model is True
    assert config_from_dict(base, ["run.register_model=false"]).run.register_model is False
