"""Shared pytest fixtures: tiny offline diffusers pipelines saved once per session."""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest


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
