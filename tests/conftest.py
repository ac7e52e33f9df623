"""Shared pytest fixtures: tiny offline diffusers pipelines saved once per session."""

from __future__ import annotations

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
