"""`slas train` with MLflow on: params, per-step metrics, sample grids, checkpoint artifacts and model versions
land in a real SQLite tracking store, and a crashed run resumed continues the same MLflow run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from slas.cli import app
from slas.platform.db import open_store
from slas.platform.tracking import SCORE_TAG, read_metrics
from slas.rewards import register
from slas.rewards.registry import unregister
from slas.rl.checkpoint import latest_checkpoint
from slas.rl.trainer import rollout_grid
from slas.testing.cli import ENV, cli_runner, error_text

FLAKY = {"calls": 0, "fail_at": None}  # the flaky reward raises on this call (a crash mid-run)


@pytest.fixture(autouse=True)
def flaky_reward():
    @register("test_flaky_brightness")
    def factory():
        def reward(images, prompts, **_):
            FLAKY["calls"] += 1
            if FLAKY["calls"] == FLAKY["fail_at"]:
                raise RuntimeError("reward server went away")
            return {"brightness": images.mean(dim=(1, 2, 3))}

        return reward

    FLAKY.update(calls=0, fail_at=None)
    yield
    unregister("test_flaky_brightness")


@pytest.fixture
def mlflow_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SLAS_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return uri


def _config(tmp_path: Path, model_dir: Path, **run: object) -> Path:
    (tmp_path / "prompts.txt").write_text("a red circle\ntwo blue squares\na green triangle\none yellow star\n")
    cfg = {
        "run": {"name": "tracked", "output_dir": str(tmp_path / "runs"), "seed": 3, "iterations": 3,
                "checkpoint_every": 2, "progress": False, **run},
        "model": {"family": "sd", "path": str(model_dir)},
        "data": {"prompts": str(tmp_path / "prompts.txt")},
        "sample": {"resolution": 32, "num_steps": 4, "group_size": 3, "prompts_per_iter": 2, "eta": 1.0},
        "rl": {"preset": "slas", "power": 2.0},
        "train": {"lr": 1e-3, "clip_range": 0.2, "batch_size": 3, "gradient_accumulation_steps": 2},
        "reward": {"components": [{"name": "test_flaky_brightness"}]},
    }
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _train(*args: str):
    return cli_runner().invoke(app, ["train", *map(str, args)], env=ENV)


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _image_steps(client: MlflowClient, run_id: str, key: str = "samples~rollout") -> list[int]:
    """Steps of the step images MLflow stored under images/ (``<key>+step+<N>+timestamp+...png``)."""
    names = [Path(f.path).name for f in client.list_artifacts(run_id, "images")]
    return sorted(int(m.group(1)) for n in names if n.endswith(".png") and "compressed" not in n
                  and (m := re.match(rf"{re.escape(key)}\+step\+(\d+)\+", n)))


def test_slas_train_logs_everything_to_mlflow_and_registers_the_final_model(tmp_path, tiny_sd_dir, mlflow_on):
    config = _config(tmp_path, tiny_sd_dir)
    result = _train(config)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tracked"
    client = MlflowClient(mlflow_on)
    with open_store() as store:
        job = store.list_jobs()[0]
    run_id = job.mlflow_run_id
    assert run_id and json.loads((run_dir / "mlflow_state.json").read_text())["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert client.get_experiment(run.info.experiment_id).name == "slas"
    params = run.data.params
    assert params["rl.std_scope"] == "batch" and params["model.family"] == "sd" and params["run.iterations"] == "3"

    # every iteration's metrics once, at its step, as in metrics.jsonl
    for key in ("reward/total/mean", "loss", "grad_norm", "time/iteration"):
        assert _steps(client, run_id, key) == [1, 2, 3], key
    jsonl = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}
    mlflow_reward = {m.step: m.value for m in client.get_metric_history(run_id, "reward/total/mean")}
    assert mlflow_reward == pytest.approx({s: jsonl[s]["reward/total/mean"] for s in (1, 2, 3)})

    # a rollout grid at the checkpoint iteration and at the last one (2 groups x 3 images of 32 px)
    assert _image_steps(client, run_id) == [2, 3]
    png = next(f.path for f in client.list_artifacts(run_id, "images")
               if "step+3+" in f.path and f.path.endswith(".png") and "compressed" not in f.path)
    with Image.open(client.download_artifacts(run_id, png, str(tmp_path / "dl"))) as grid:
        assert grid.size == (3 * 34 + 2, 2 * 34 + 2)
    assert (run_dir / "images" / "samples_rollout" / "step_000003.png").is_file()  # the JSONL side keeps them too

    # the final checkpoint uploaded and registered as version 1 of the run's model, with its score
    final = latest_checkpoint(run_dir / "checkpoints")
    assert final.name == "iter_000003"
    names = {Path(f.path).name for f in client.list_artifacts(run_id, "checkpoints/iter_000003")}
    assert {"trainable", "trainer_state.json", "optimizer.pt", "COMPLETE"} <= names
    version = client.get_model_version_by_alias("tracked", "best")
    assert int(version.version) == 1 and version.run_id == run_id
    assert version.source == f"runs:/{run_id}/checkpoints/iter_000003"
    assert float(version.tags[SCORE_TAG]) == pytest.approx(jsonl[3]["reward/total/mean"])
    assert version.tags["slas.iteration"] == "3"
    assert int(client.get_model_version_by_alias("tracked", "latest").version) == 1


def test_a_crashed_run_resumes_the_same_mlflow_run_without_duplicate_steps(tmp_path, tiny_sd_dir, mlflow_on):
    config = _config(tmp_path, tiny_sd_dir, iterations=4, log_images_every=1)
    FLAKY["fail_at"] = 4  # iteration 4's reward call: after checkpoint 2 and iteration 3's metrics and grid
    result = _train(config)
    # an unexpected error: one line naming it (the traceback goes to a file), exit 1
    assert result.exit_code == 1 and "reward server went away" in error_text(result)
    run_dir = tmp_path / "runs" / "tracked"
    assert latest_checkpoint(run_dir / "checkpoints").name == "iter_000002"
    client = MlflowClient(mlflow_on)
    with open_store() as store:
        job = store.list_jobs()[0]
    run_id = job.mlflow_run_id
    assert job.status == "failed" and client.get_run(run_id).info.status == "FAILED"
    assert _steps(client, run_id, "reward/total/mean") == [1, 2, 3]
    first_3 = client.get_metric_history(run_id, "reward/total/mean")[-1].value
    assert client.search_registered_models() == []  # a failed run registers nothing

    # resume: iteration 3 is trained again from checkpoint 2; its step is not logged twice
    (run_dir / "mlflow_state.json").unlink()  # the job store's run id alone is enough to find the run
    result = _train(config, "--resume")
    assert result.exit_code == 0, result.output
    with open_store() as store:
        assert [j.id for j in store.list_jobs()] == [job.id]
        assert store.get_job(job.id).mlflow_run_id == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("reward/total/mean", "loss"):
        assert _steps(client, run_id, key) == [1, 2, 3, 4], key
    assert {m.step: m.value for m in client.get_metric_history(run_id, "reward/total/mean")}[3] == first_3
    assert _image_steps(client, run_id) == [1, 2, 3, 4]
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    assert len(client.search_runs([run.info.experiment_id])) == 1
    versions = client.search_model_versions("name='tracked'")
    assert [int(v.version) for v in versions] == [1] and versions[0].source.endswith("checkpoints/iter_000004")

    # training further registers version 2; `best` goes to whichever final reward is higher
    result = _train(config, "--resume", "--set", "run.iterations=5")
    assert result.exit_code == 0, result.output
    assert _steps(client, run_id, "reward/total/mean") == [1, 2, 3, 4, 5]
    scores = {int(v.version): float(v.tags[SCORE_TAG]) for v in client.search_model_versions("name='tracked'")}
    assert sorted(scores) == [1, 2]
    assert int(client.get_model_version_by_alias("tracked", "best").version) == max(scores, key=scores.get)
    assert int(client.get_model_version_by_alias("tracked", "latest").version) == 2

    # a fresh run in the same run dir is a new MLflow run; the earlier run's outputs are moved, not lost
    result = _train(config, "--set", "run.iterations=1")
    assert result.exit_code == 0, result.output
    moved = list((run_dir / "previous").iterdir())
    assert len(moved) == 1 and (moved[0] / "checkpoints" / "iter_000005").is_dir()
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1]
    with open_store() as store:
        new_run = store.list_jobs()[0].mlflow_run_id
    assert new_run != run_id and _steps(client, new_run, "reward/total/mean") == [1]


def test_rollout_grid_rows_are_groups_and_tiles_are_capped():
    images = torch.rand(12, 3, 40, 20)
    images[3:6] = 0.0  # group 1 is black
    group_ids = torch.arange(4).repeat_interleave(3)
    grid = rollout_grid(images, group_ids, max_groups=3, max_per_group=2, tile=10, pad=1)
    assert grid.shape == (3, 3 * 11 + 1, 2 * 6 + 1)  # 3 rows, 2 columns of 40x20 tiles scaled to 10x5
    assert float(grid[:, 12:22, 1:6].max()) == 0.0  # the second row holds group 1
    assert float(grid.min()) >= 0 and float(grid.max()) <= 1
