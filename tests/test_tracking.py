"""MLflow tracking against real stores: a SQLite backend in tmp_path, and a real `mlflow server` that dies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from slas.platform.tracking import (
    SCORE_TAG,
    JsonlTracker,
    MLflowTracker,
    TeeTracker,
    TrackingError,
    TrackingServerUnavailable,
    make_tracker,
    read_metrics,
)


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("SLAS_MLFLOW", raising=False)


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _checkpoint(root: Path, name: str) -> Path:
    path = root / "checkpoints" / name
    path.mkdir(parents=True)
    (path / "trainable.safetensors").write_bytes(b"weights-" + name.encode())
    (path / "trainer_state.json").write_text(json.dumps({"iteration": 3}))
    return path


# ------------------------------------------------------------------ (a) SQLite store, default location
def test_sqlite_default_store_logs_params_metrics_images_artifacts_and_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLAS_HOME", raising=False)  # conftest points it at a temp dir; test the cwd default
    run_dir = tmp_path / "runs" / "demo"
    tracker = MLflowTracker(run_dir, run_name="demo")
    assert tracker.tracking_uri == f"sqlite:///{tmp_path.resolve()}/.slas/mlflow.db"
    assert (tmp_path / ".slas" / "mlflow.db").is_file()

    tracker.log_params(
        {"train": {"lr": 1e-4, "power": 1.5}, "data": {"prompts": ["a", "b"]}, "long": "x" * 7000}
    )
    for step in (1, 2, 3):
        tracker.log_metrics(
            {"reward/total/mean": 0.1 * step, "loss": float("nan") if step == 2 else 1.0}, step
        )
    grid = np.zeros((8, 16, 3), dtype=np.uint8)
    grid[:, 8:] = 255
    tracker.log_image(grid, "samples/grid", step=2)
    ckpt = _checkpoint(run_dir, "iter_000003")
    tracker.log_artifact(ckpt)
    v1 = tracker.register_model("slas-demo", ckpt, best=True)
    v2 = tracker.register_model("slas-demo", _checkpoint(run_dir, "iter_000004"))
    tracker.close()

    client = MlflowClient(tracker.tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "demo"
    assert run.info.artifact_uri.startswith((tmp_path / ".slas" / "mlartifacts").resolve().as_uri())
    params = run.data.params
    assert params["train.lr"] == "0.0001" and params["train.power"] == "1.5"
    assert params["data.prompts"] == '["a", "b"]'
    assert params["long"] == "x" * 6000
    assert _steps(client, tracker.run_id, "reward/total/mean") == [1, 2, 3]
    assert _steps(client, tracker.run_id, "loss") == [1, 3]  # NaN skipped

    images = [f.path for f in client.list_artifacts(tracker.run_id, "images")]
    assert any("samples~grid+step+2+" in p and p.endswith(".png") for p in images)
    png = next(p for p in images if p.endswith(".png"))
    local = client.download_artifacts(tracker.run_id, png, str(tmp_path / "dl"))
    assert Image.open(local).size == (16, 8)
    ckpt_files = {Path(f.path).name for f in client.list_artifacts(tracker.run_id, "checkpoints/iter_000003")}
    assert ckpt_files == {"trainable.safetensors", "trainer_state.json"}

    assert (v1, v2) == (1, 2)
    assert int(client.get_model_version_by_alias("slas-demo", "best").version) == 1
    assert int(client.get_model_version_by_alias("slas-demo", "latest").version) == 2
    mv = client.get_model_version("slas-demo", "1")
    assert mv.run_id == tracker.run_id and mv.source == f"runs:/{tracker.run_id}/checkpoints/iter_000003"


# ------------------------------------------------------------------ (b) resume
def test_resume_continues_the_run_without_duplicate_steps(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = MLflowTracker(tmp_path / "run", tracking_uri=uri, run_name="r")
    first.log_params({"seed": 0})
    for step in range(5):
        first.log_metrics({"loss": float(step)}, step)
    first.close("KILLED")
    run_id = first.run_id

    # The job store hands back the run id; a fresh run dir has no local state, so steps come from MLflow.
    second = MLflowTracker(tmp_path / "elsewhere", tracking_uri=uri, run_id=run_id)
    assert second.run_id == run_id
    second.log_params({"seed": 0})  # unchanged params are fine on resume
    with pytest.warns(RuntimeWarning, match="cannot change"):
        second.log_params({"seed": 1})  # MLflow forbids changing one: warned and kept, the run goes on
    for step in range(3, 8):  # the trainer repeats iterations after its last checkpoint
        second.log_metrics({"loss": 100.0 + step}, step)
    second.close()

    # Reopening the same run dir finds the run through mlflow_state.json.
    third = MLflowTracker(tmp_path / "run", tracking_uri=uri)
    assert third.run_id == run_id
    third.log_metrics({"loss": 8.0}, 7)
    third.log_metrics({"loss": 8.0}, 8)
    third.close()

    client = MlflowClient(uri)
    history = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert _steps(client, run_id, "loss") == list(range(9))
    assert history[3] == 3.0 and history[5] == 105.0  # the first value logged for a step is kept
    assert client.get_run(run_id).info.status == "FINISHED"

    with pytest.raises(TrackingError, match="not found"):
        MLflowTracker(tmp_path / "x", tracking_uri=uri, run_id="0" * 32)


def test_make_tracker_tees_jsonl_and_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tee-test")
    tee = make_tracker(tmp_path / "run", params={"model": {"family": "sd"}}, run_name="tee")
    mlflow_tracker = next(t for t in tee.trackers if isinstance(t, MLflowTracker))
    assert isinstance(tee, TeeTracker) and tee.run_id == mlflow_tracker.run_id
    for step in (1, 2):
        tee.log_metrics({"reward": 0.5 * step}, step=step)
    tee.log_image(Image.new("RGB", (4, 4)), "samples/grid", step=2)
    tee.close()
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert (tmp_path / "run" / "images" / "samples_grid" / "step_000002.png").is_file()
    client = MlflowClient(uri)
    run = client.get_run(tee.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "tee-test"
    assert run.data.params["model.family"] == "sd" and _steps(client, tee.run_id, "reward") == [1, 2]

    monkeypatch.setenv("SLAS_MLFLOW", "0")
    offline = make_tracker(tmp_path / "run2", params={"a": 1}, run_name="off")
    assert [type(t) for t in offline.trackers] == [JsonlTracker] and offline.run_id is None
    offline.close()


def test_best_alias_follows_the_highest_score(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MLflowTracker(tmp_path / "run", tracking_uri=uri, run_name="scored")
    versions = {}
    for i, score in enumerate((0.5, 0.3, 0.9, None, float("nan"))):
        versions[score] = tracker.register_model("scored", _checkpoint(tmp_path / "run", f"iter_{i:06d}"), score=score)
        best = MlflowClient(uri).get_model_version_by_alias("scored", "best")
        assert int(best.version) == (1 if i < 2 else 3), (i, score)
    tracker.close()
    client = MlflowClient(uri)
    assert client.get_model_version("scored", "2").tags[SCORE_TAG] == "0.3"
    assert SCORE_TAG not in client.get_model_version("scored", "4").tags  # no score: never the best by score
    assert int(client.get_model_version_by_alias("scored", "latest").version) == 5


_START_RUN = """
import sys
from slas.platform.tracking import MLflowTracker
tracker = MLflowTracker(sys.argv[1], tracking_uri=sys.argv[2], run_name=sys.argv[3])
tracker.log_metrics({"loss": 1.0}, 1)
tracker.close()
print(tracker.run_id)
"""


def test_runs_starting_together_on_a_fresh_sqlite_store_do_not_race(tmp_path: Path) -> None:
    """MLflow creates a SQLite store's tables on first use, unlocked; jobs submitted together must not collide."""
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _START_RUN, str(tmp_path / f"run{i}"), uri, f"r{i}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outs]
    client = MlflowClient(uri)
    for out, _ in outs:
        assert client.get_run(out.strip()).info.status == "FINISHED"


# ------------------------------------------------------------------ (c) a real server that goes away
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on loopback with a SQLite store in tmp; stop() kills it like a crash would."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [str(exe), "server", "--backend-store-uri", f"sqlite:///{self.root}/server.db"]
        cmd += ["--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        log = (self.root / "server.log").open("ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(
            f"mlflow server not healthy after 90 s: {(self.root / 'server.log').read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group we started: the server and its workers
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_server_outage_buffers_on_disk_and_replays_every_step_once(
    server: MlflowServer, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    tracker = MLflowTracker(run_dir, tracking_uri=server.uri, run_name="outage", retry_interval=0)
    tracker.log_params({"train": {"lr": 0.001}})
    for step in range(3):
        tracker.log_metrics({"loss": float(step), "reward": 1.0}, step)
    run_id = tracker.run_id
    assert run_id is not None

    server.stop()
    ckpt = _checkpoint(run_dir, "iter_000005")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        for step in range(3, 6):
            tracker.log_metrics({"loss": float(step), "reward": 1.0}, step)
        tracker.log_image(Image.new("RGB", (6, 6), "red"), "samples/grid", step=5)
        tracker.log_artifact(ckpt)
        elapsed = time.monotonic() - t0
    outage = [w for w in caught if issubclass(w.category, TrackingServerUnavailable)]
    assert len(outage) == 1 and "buffered" in str(outage[0].message)
    assert elapsed < 10, f"logging against a dead server took {elapsed:.1f} s"
    buffer = run_dir / "mlflow_buffer.jsonl"
    kinds = [json.loads(line)["kind"] for line in buffer.read_text().splitlines()]
    assert kinds == ["metrics", "metrics", "metrics", "image", "artifact"] and tracker.buffered == 5

    # A second run that starts while the server is down has no run id yet; it gets one when it returns.
    with pytest.warns(TrackingServerUnavailable, match="unreachable"):
        late = MLflowTracker(tmp_path / "late", tracking_uri=server.uri, run_name="late", retry_interval=0)
    assert late.run_id is None
    late.log_params({"seed": 7})
    for step in range(3):
        late.log_metrics({"loss": float(step)}, step)
    # A third ends (or crashes) before the server returns: its buffer waits in its run dir.
    with pytest.warns(TrackingServerUnavailable):
        crashed = MLflowTracker(tmp_path / "crashed", tracking_uri=server.uri, retry_interval=0)
    crashed.log_metrics({"loss": 0.0}, 0)
    with pytest.warns(TrackingServerUnavailable, match="still unreachable at close"):
        crashed.close("KILLED")

    server.start()
    tracker.retry_interval = 3600  # within the back-off window nothing is sent, even though it is back
    tracker.log_metrics({"loss": 6.0, "reward": 1.0}, 6)
    assert tracker.buffered == 6
    tracker.retry_interval = 0
    tracker.log_metrics({"loss": 7.0, "reward": 1.0}, 7)  # replays the buffer first, then sends step 7
    assert tracker.buffered == 0 and not buffer.exists() and not (run_dir / "mlflow_buffer").exists()
    tracker.close()
    late.log_metrics({"loss": 3.0}, 3)
    assert late.run_id is not None and late.buffered == 0
    late.close()
    resumed = MLflowTracker(tmp_path / "crashed", tracking_uri=server.uri)  # replays the old buffer at once
    assert resumed.buffered == 0 and resumed.run_id is not None
    resumed.log_metrics({"loss": 0.5}, 0)  # a repeated step: dropped
    resumed.log_metrics({"loss": 1.0}, 1)
    resumed.close()

    client = MlflowClient(server.uri)
    assert _steps(client, run_id, "loss") == list(range(8))
    assert _steps(client, run_id, "reward") == list(range(8))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.001"
    assert any("step+5" in f.path for f in client.list_artifacts(run_id, "images"))
    names = {Path(f.path).name for f in client.list_artifacts(run_id, "checkpoints/iter_000005")}
    assert names == {"trainable.safetensors", "trainer_state.json"}
    late_run = client.get_run(late.run_id)
    assert late_run.info.run_name == "late" and late_run.data.params["seed"] == "7"
    assert _steps(client, late.run_id, "loss") == [0, 1, 2, 3]
    assert _steps(client, resumed.run_id, "loss") == [0, 1]
    assert client.get_run(resumed.run_id).info.status == "FINISHED"


def test_a_hung_server_costs_one_timeout_then_calls_go_straight_to_disk(tmp_path: Path) -> None:
    # A socket that accepts connections and never answers: what a wedged server or proxy looks like.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.warns(TrackingServerUnavailable, match="unreachable"):
            tracker = MLflowTracker(tmp_path / "run", tracking_uri=uri, http_timeout=1, retry_interval=60)
        first = time.monotonic() - t0
        t0 = time.monotonic()
        for step in range(20):
            tracker.log_metrics({"loss": float(step)}, step)
        rest = time.monotonic() - t0
        assert first < 5, f"first contact took {first:.1f} s"
        assert rest < 1, f"20 buffered steps took {rest:.1f} s"
        assert tracker.buffered == 20 and tracker.run_id is None
        assert tracker._wait() == 60
        assert not tracker.flush()  # still hung: the wait before the next try doubles
        assert tracker._wait() == 120
