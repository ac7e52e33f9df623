"""``slas eval geneval`` records its evaluation: a job-store row, and metrics on the checkpoint's MLflow run."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from slas.cli.common import SlasTyper
from slas.cli.eval import app as eval_app
from slas.eval.geneval import GENEVAL_TAGS
from slas.eval.record import CheckpointOwner, checkpoint_owner, iteration_of, log_on_run, record_eval
from slas.platform.db import open_store
from slas.shapes.assets import T2I, assets_dir, reward_components
from slas.testing.cli import ENV, cli_runner, error_text, run_cli
from slas.testing.postgres import free_port


def run_eval(*args: object, env: dict | None = None):
    root = SlasTyper()
    root.add_typer(eval_app, name="eval")
    return cli_runner().invoke(root, ["eval", *(str(a) for a in args)], env={**ENV, **(env or {})})


def two_prompts(tmp: Path) -> Path:
    from slas.shapes.prompts import metadata

    records = metadata("test")
    rows = [next(r for r in records if r["tag"] == tag) for tag in GENEVAL_TAGS[:2]]
    path = tmp / "meta.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fake_run(tmp: Path) -> Path:
    """A run dir holding the shipped shapes weights as its iteration-3 trainer checkpoint, and its config."""
    from slas.rl.checkpoint import save_checkpoint
    from slas.shapes.models import IMAGE_SIZE, TEXT_MAX_LENGTH

    run = tmp / "runs" / "shapes"
    (run / "checkpoints").mkdir(parents=True)
    (tmp / "prompts.txt").write_text("a red circle\n")
    config = {
        "run": {"name": "shapes", "output_dir": str(tmp / "runs")},
        "model": {"family": "flux", "path": str(assets_dir() / T2I), "device": "cpu"},
        "data": {"prompts": str(tmp / "prompts.txt")},
        "sample": {"resolution": IMAGE_SIZE, "num_steps": 10, "max_sequence_length": TEXT_MAX_LENGTH},
        "reward": {"components": reward_components()},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    weights = assets_dir() / T2I / "transformer"
    save_checkpoint(run / "checkpoints", 3, lambda d: shutil.copytree(weights, d / "trainable" / "transformer"))
    return run


@pytest.fixture
def known_run(tmp_path, monkeypatch, session_mlflow_uri):
    """The fake run as a job of the store, with the checkpoint recorded and an MLflow run of its own (in the
    session's MLflow store: a fresh one costs seconds of migrations)."""
    monkeypatch.setenv("SLAS_MLFLOW", "1")
    run = fake_run(tmp_path)
    client = MlflowClient(session_mlflow_uri)
    mlflow_run = client.create_run(client.create_experiment(f"eval-record-{tmp_path.name}"), run_name="shapes")
    client.set_terminated(mlflow_run.info.run_id)  # a finished run still takes its checkpoints' evaluations
    with open_store() as store:
        job = store.create_job(name="shapes", config={}, run_dir=run.resolve())
        store.add_checkpoint(job.id, 3, (run / "checkpoints" / "iter_000003").resolve())
        store.set_mlflow_run_id(job.id, mlflow_run.info.run_id)
    return run, job.id, mlflow_run.info.run_id, client


def test_geneval_records_a_row_and_metrics_on_the_checkpoints_run(tmp_path, known_run):
    run, job_id, run_id, client = known_run
    out = tmp_path / "out"
    result = run_eval("geneval", "--checkpoint", run, "--metadata", two_prompts(tmp_path), "--images-per-prompt", 1,
                      "--output", out)
    assert result.exit_code == 0, error_text(result)
    summary = json.loads((out / "summary.json").read_text())
    with open_store() as store:
        (row,) = store.list_evals()
    assert (row.job_id, row.iteration, row.benchmark, row.n_images) == (job_id, 3, "geneval", 2)
    assert row.scores == pytest.approx(summary) and row.checkpoint == str((run / "checkpoints" / "iter_000003").resolve())
    assert row.results_path == str(out.resolve() / "results.jsonl") and row.images_dir == str(out.resolve() / "images")
    assert row.settings["detector"] == "shapes" and row.settings["images_per_prompt"] == 1
    assert row.settings["prompts"] == 2 and row.settings["sampler"]["num_steps"] == 10
    assert f"recorded as evaluation {row.id} in the job store (job {job_id}, metrics on MLflow run {run_id})" in result.stdout
    for tag, value in summary.items():
        (metric,) = client.get_metric_history(run_id, f"eval/geneval/{tag}")
        assert (metric.step, metric.value) == (3, pytest.approx(value))
    assert client.get_run(run_id).info.status == "FINISHED"

    # --no-record leaves the store alone
    result = run_eval("geneval", "--checkpoint", run, "--metadata", two_prompts(tmp_path), "--images-per-prompt", 1,
                      "--output", tmp_path / "again", "--no-record")
    assert result.exit_code == 0, error_text(result)
    assert "recorded as" not in result.stdout
    with open_store() as store:
        assert len(store.list_evals()) == 1


def test_an_unreachable_mlflow_warns_and_the_row_is_still_written(tmp_path, known_run, monkeypatch):
    run, job_id, _, _ = known_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    result = run_cli("eval", "geneval", "--checkpoint", run, "--metadata", two_prompts(tmp_path),
                     "--images-per-prompt", 1, "--output", tmp_path / "out")  # the whole app: its one-line warnings
    assert result.exit_code == 0, error_text(result)
    warning = [line for line in error_text(result).splitlines() if "MLflow" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: MLflow: the evaluation's metrics were not logged")
    assert "they are in the job store" in warning[0]
    with open_store() as store:
        assert [r.job_id for r in store.list_evals()] == [job_id]


def test_a_store_that_cannot_open_fails_before_any_image(tmp_path, monkeypatch):
    import slas.policies

    monkeypatch.setattr(slas.policies, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    bad = f"postgresql://u:secret@127.0.0.1:{free_port()}/x"
    result = run_eval("geneval", "--checkpoint", assets_dir() / T2I, "--metadata", two_prompts(tmp_path),
                      "--output", tmp_path / "out", env={"SLAS_DATABASE_URL": bad, "SLAS_STORE_LOCK_TIMEOUT": "1"})
    assert result.exit_code == 2
    err = error_text(result)
    assert len(err.splitlines()) == 1 and "cannot open the job store" in err and "secret" not in err, err
    assert not (tmp_path / "out").exists()


def test_owner_of_model_dirs_unknown_checkpoints_and_run_dirs(tmp_path):
    run = fake_run(tmp_path)
    ckpt = run / "checkpoints" / "iter_000003"
    with open_store() as store:
        assert checkpoint_owner(store, None, "shapes-t2i") == CheckpointOwner("shapes-t2i")
        assert checkpoint_owner(store, ckpt, "x") == CheckpointOwner(str(ckpt.resolve()), None, 3, None)
        job = store.create_job(name="shapes", config={}, run_dir=run.resolve())  # checkpoint not recorded: run dir
        assert checkpoint_owner(store, ckpt, "x").job_id == job.id
    assert iteration_of(Path("iter_000040")) == 40 and iteration_of(Path("final")) is None


def test_record_eval_leaves_out_untested_dimensions_and_mlflow_off_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SLAS_MLFLOW", "0")
    with open_store() as store:
        row = record_eval(store, CheckpointOwner("m", mlflow_run_id="abc"), benchmark="unigenbench",
                          scores={"overall": 0.5, "Logic": None}, n_images=1, settings={}, out=tmp_path)
        assert row.scores == {"overall": 0.5}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert log_on_run("abc", {"eval/x/overall": 1.0}, 1) is False


def test_unigenbench_records_its_evaluation_too(tmp_path, tiny_qwen_vl):
    out = tmp_path / "out"
    result = run_eval("unigenbench", "--checkpoint", assets_dir() / T2I, "--prompts", "short", "--limit", 1,
                      "--images-per-prompt", 1, "--judge-model", tiny_qwen_vl, "--batch-size", 4, "--output", out)
    assert result.exit_code == 0, error_text(result)
    summary = json.loads((out / "summary.json").read_text())
    with open_store() as store:
        (row,) = store.list_evals(benchmark="unigenbench")
    assert row.job_id is None and row.iteration is None and row.n_images == 1  # a model dir: no job
    assert row.scores == pytest.approx({k: v for k, v in summary.items() if v is not None})
    assert (row.settings["prompt_set"], row.settings["prompts"], row.settings["protocol"]) == ("short", 1, "testpoint")
    assert f"recorded as evaluation {row.id} in the job store (no job" in result.stdout
