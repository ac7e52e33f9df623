"""Where `slas` puts things by default (one rule: slas.paths) and says where a run went."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from slas.config import config_from_dict
from slas.paths import runs_root, slas_home
from slas.testing.cli import error_text, run_cli

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"model": {"family": "sd", "path": "x"}, "data": {"prompts": "p.txt"},
           "reward": {"components": [{"name": "clip"}]}}


@pytest.fixture
def calls(monkeypatch):
    """``run_demo`` and ``run_hacking`` replaced by recorders of their arguments."""
    import slas.bench.hacking
    import slas.shapes.demo

    seen: dict[str, tuple] = {}
    monkeypatch.setattr(slas.shapes.demo, "run_demo", lambda *a, **kw: seen.setdefault("demo", (a, kw)))
    monkeypatch.setattr(slas.bench.hacking, "run_hacking", lambda *a, **kw: seen.setdefault("hacking", (a, kw)))
    return seen


def test_run_dir_follows_slas_home_unless_given(tmp_path, monkeypatch):
    monkeypatch.setenv("SLAS_HOME", str(tmp_path / "home"))
    assert config_from_dict(MINIMAL).run_dir == tmp_path / "home" / "runs" / "run"
    given = config_from_dict(MINIMAL, ["run.output_dir=elsewhere"])
    assert given.run_dir == Path("elsewhere") / "run"  # as given, not moved under SLAS_HOME
    monkeypatch.delenv("SLAS_HOME")
    assert config_from_dict(MINIMAL).run_dir == Path("runs") / "run"


def test_config_prints_where_the_run_goes(tmp_path, monkeypatch):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(MINIMAL))
    r = run_cli("config", config)
    assert r.exit_code == 0
    assert yaml.safe_load(r.stdout)["run"]["output_dir"] is None
    assert r.stdout.rstrip().splitlines()[-1] == f"# run dir: {runs_root() / 'run'}"


def test_demo_and_bench_outputs_default_under_the_runs_root(calls, tmp_path):
    assert run_cli("demo", "--quick").exit_code == 0
    assert run_cli("bench", "hacking", "--num-seeds", "2", "--quick").exit_code == 0
    (out,), demo_kw = calls["demo"]
    assert out == runs_root() / "demo" and demo_kw["quick"] is True
    (seeds,), hacking_kw = calls["hacking"]
    assert seeds == 2 and hacking_kw["out"] == runs_root() / "bench_hacking"
    assert runs_root().parent == slas_home()  # the tests set SLAS_HOME: outputs follow it
    calls.clear()
    assert run_cli("demo", "--out", tmp_path / "mine").exit_code == 0
    assert calls["demo"][0] == (tmp_path / "mine",)


def test_bench_hacking_rejects_zero_seeds(calls):
    r = run_cli("bench", "hacking", "--num-seeds", "0")
    assert r.exit_code == 2 and "hacking" not in calls


def test_train_says_where_the_run_the_job_and_the_mlflow_run_are(tmp_path, monkeypatch):
    import slas.run

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL, "run": {"name": "where"}}))
    trainer = SimpleNamespace(iteration=2, ckpt_dir=tmp_path / "ckpt", tracker=SimpleNamespace(run_id="abc123"))
    monkeypatch.setattr(slas.run, "run_training",
                        lambda cfg, **_: slas.run.TrainingOutcome("completed", trainer, 7))
    monkeypatch.setenv("SLAS_DATABASE_URL", "postgresql://me:secret@db.example/slas")
    r = run_cli("train", config)
    assert r.exit_code == 0, error_text(r)
    lines = r.stdout.splitlines()
    assert lines[0] == f"job 7: done: 2 iterations; metrics and checkpoints in {runs_root() / 'where'}"
    assert lines[1].split() == ["run", "dir:", str((runs_root() / "where").resolve())]
    assert lines[2].split() == ["job", "store:", "job", "7", "in", "postgresql://me:***@db.example/slas"]
    assert lines[3].split()[:4] == ["MLflow:", "run", "abc123", "in"] and "secret" not in r.stdout
