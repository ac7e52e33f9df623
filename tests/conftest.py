"""Shared pytest fixtures: tiny offline diffusers pipelines saved once per session."""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding ``build_tiny_sd_pipeline(seed=0)`` saved with ``save_pretrained``."""
    from slas.testing.tiny import save_tiny_pipeline

    return save_tiny_pipeline("sd", tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding ``build_tiny_flux_pipeline(seed=0)`` saved with ``save_pretrained``."""
    from slas.testing.tiny import save_tiny_pipeline

    return save_tiny_pipeline("flux", tmp_path_factory.mktemp("tiny_flux"))


@pytest.fixture(scope="session")
def tiny_kontext_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding ``build_tiny_kontext_pipeline(seed=0)`` (a FluxKontextPipeline) saved with ``save_pretrained``."""
    from slas.testing.tiny import save_tiny_pipeline

    return save_tiny_pipeline("flux_kontext", tmp_path_factory.mktemp("tiny_kontext"))


@pytest.fixture(scope="session")
def tiny_qwen_edit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding ``build_tiny_qwen_edit_pipeline(seed=0)`` (a QwenImageEditPlusPipeline), saved."""
    from slas.testing.tiny import save_tiny_pipeline

    return save_tiny_pipeline("qwen_image_edit", tmp_path_factory.mktemp("tiny_qwen_edit"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformers CLIP saved once per session (the `clip` reward's transformers backend)."""
    from slas.testing.tiny_clip import save_tiny_hf_clip

    return save_tiny_hf_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_qwen_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL (model + processor) saved once per session (the MLLM judges' loader)."""
    from slas.testing.tiny_qwen import save_tiny_qwen_vl

    return save_tiny_qwen_vl(tmp_path_factory.mktemp("tiny_qwen_vl"), seed=0)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_sd_dir: Path, tiny_clip: Path) -> Path:
    """A project folder with a tiny run config (relative paths, as a user's would be); cwd is set to it.

    Jobs started from it run with one OpenMP thread: two detached jobs with torch's default threads on a
    2-core machine spend their time spinning against each other (measured: ~40 s instead of ~0.5 s per
    tiny iteration), which made the tests' waits time out.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "prompts.txt").write_text("a red circle\ntwo blue squares\na green triangle\none yellow star\n")
    cfg = {
        "run": {"name": "tiny", "output_dir": "runs", "seed": 3, "iterations": 2, "checkpoint_every": 1,
                "progress": False},
        "model": {"family": "sd", "path": str(tiny_sd_dir)},
        "data": {"prompts": "prompts.txt"},
        "sample": {"resolution": 32, "num_steps": 4, "group_size": 3, "prompts_per_iter": 2, "max_sequence_length": 32,
                   "eta": 1.0},
        "rl": {"preset": "slas", "power": 2.0},
        "train": {"lr": 1e-3, "clip_range": 0.2, "batch_size": 2, "gradient_accumulation_steps": 2},
        "reward": {"components": [{"name": "clip", "options": {"backend": "transformers", "model": str(tiny_clip),
                                                               "device": "cpu"}}]},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path


@pytest.fixture(scope="session")
def session_mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow SQLite store for the session: training tests track for real without each paying for a
    fresh store's schema migrations (seconds apiece). Tests that inspect MLflow use a store of their own."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _isolated_job_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, session_mlflow_uri: str
) -> None:
    """Runs recorded by `slas train` go to a per-test SQLite store, never to ./.slas of the checkout, and
    are tracked in the session's MLflow store."""
    monkeypatch.setenv("SLAS_HOME", str(tmp_path_factory.mktemp("slas_home")))
    monkeypatch.delenv("SLAS_DATABASE_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", session_mlflow_uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (Debian's binaries) on loopback for the whole session; fails if absent."""
    from slas.testing.postgres import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
    except PostgresUnavailable as exc:
        server.stop()
        pytest.fail(f"PostgreSQL did not start: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty job-store database on each backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'slas.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"store_{next(_DATABASES)}")


_DATABASES = itertools.count()
