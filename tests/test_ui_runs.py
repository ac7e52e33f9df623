"""The review UI's run view: curves from MLflow (or metrics.jsonl), rollout grids, config differences."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from PIL import Image

from slas.platform.db import open_store
from slas.ui.app import diff_runs, show_runs
from slas.ui.imagefiles import ImageAccessError
from slas.ui.runs import config_diff, curves_figure, metric_keys, mlflow_ui_url, rollout_grids, run_curves


@pytest.fixture
def store(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'slas.db'}") as s:
        yield s


def _offline_job(store, tmp_path, name="dancegrpo", steps=(1, 2, 3)):
    run_dir = tmp_path / name
    (run_dir / "images" / "samples_rollout").mkdir(parents=True)
    with (run_dir / "metrics.jsonl").open("w") as fh:
        for s in steps:
            fh.write(json.dumps({"step": s, "time": 0.0, "reward/mean": 0.1 * s, "loss": 1.0 / s}) + "\n")
    for s in steps:
        Image.fromarray(np.full((8, 8, 3), (40 * s) % 256, np.uint8)).save(run_dir / "images" / "samples_rollout" / f"step_{s:06d}.png")
    cfg = {"rl": {"preset": "dancegrpo", "power": 1.0}, "run": {"name": name, "seed": 0}}
    return store.create_job(name=name, config=cfg, run_dir=run_dir)


def test_curves_come_from_mlflow_and_fall_back_to_metrics_jsonl(store, tmp_path, session_mlflow_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=session_mlflow_uri)
    exp = client.create_experiment(f"ui-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp)
    for step in (1, 2, 3, 4):
        client.log_metric(run.info.run_id, "reward/mean", 0.2 * step, step=step)
        client.log_metric(run.info.run_id, "eval/geneval/overall", 0.5 + 0.01 * step, step=step)
    client.set_terminated(run.info.run_id)
    tracked = store.create_job(name="slas", config={"rl": {"preset": "slas", "power": 2.0}, "run": {"name": "slas", "seed": 0}},
                               run_dir=tmp_path / "slas")
    store.set_mlflow_run_id(tracked.id, run.info.run_id)
    offline = _offline_job(store, tmp_path)

    a = run_curves(store, tracked.id, tracking_uri=session_mlflow_uri)
    assert a.source == "mlflow" and a.series["reward/mean"] == [(1, 0.2), (2, 0.4), (3, pytest.approx(0.6)), (4, 0.8)]
    assert a.mlflow_url is None  # a SQLite store has no UI address, unless one is given
    served = run_curves(store, tracked.id, tracking_uri=session_mlflow_uri, ui_url="http://mlflow.team:5000")
    assert served.mlflow_url == f"http://mlflow.team:5000/#/experiments/{exp}/runs/{run.info.run_id}"
    b = run_curves(store, offline.id, tracking_uri=session_mlflow_uri)
    assert b.source.startswith("metrics.jsonl") and b.series["loss"][-1] == (3, pytest.approx(1 / 3))
    assert metric_keys([a, b])[:2] == ["reward/mean", "eval/geneval/overall"]
    fig = curves_figure([a, b], ["reward/mean"])
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2  # both runs overlaid
    store.update_job(offline.id, mlflow_run_id="0" * 32)  # MLflow cannot answer: the file still can
    c = run_curves(store, offline.id, tracking_uri=session_mlflow_uri)
    assert c.source.startswith("metrics.jsonl (MLflow: ") and c.series == b.series

    keys_update, figure, info, grids = show_runs(store, [offline.id, tracked.id], [])
    assert keys_update["value"] == ["reward/mean", "eval/geneval/overall", "loss"] and figure is not None
    assert f"#{offline.id} dancegrpo" in info and "from metrics.jsonl" in info and "from mlflow" in info
    assert [cap for _, cap in grids] == [f"samples_rollout · step {s}" for s in (1, 2, 3)]  # the first run's


def test_mlflow_links_config_diff_and_grids(store, tmp_path):
    assert mlflow_ui_url("http://mlflow:5000/", "3", "abc") == "http://mlflow:5000/#/experiments/3/runs/abc"
    assert mlflow_ui_url("sqlite:///x.db", "3", "abc") is None
    a = _offline_job(store, tmp_path, "a", steps=range(1, 31))
    b = store.create_job(name="b", config={"rl": {"preset": "slas", "power": 2.0}, "run": {"name": "b", "seed": 0},
                                           "train": {"lr": 1e-4}}, run_dir=tmp_path / "b")
    assert config_diff(a, b) == [["rl.power", "1.0", "2.0"], ["rl.preset", "dancegrpo", "slas"],
                                 ["run.name", "a", "b"], ["train.lr", "(unset)", "0.0001"]]
    table = diff_runs(store, a.id, b.id)
    assert list(table.columns) == ["config key", f"#{a.id} a", f"#{b.id} b"] and len(table) == 4
    grids = rollout_grids(a, limit=5)
    assert [cap for _, cap in grids] == [f"samples_rollout · step {s}" for s in (1, 8, 15, 23, 30)]
    assert rollout_grids(b) == []  # no images folder
    outside = tmp_path / "outside.png"
    Image.new("RGB", (4, 4)).save(outside)
    (tmp_path / "a" / "images" / "samples_rollout" / "step_000099.png").symlink_to(outside)
    with pytest.raises(ImageAccessError, match="outside the store's image folders"):
        rollout_grids(a, limit=100)
