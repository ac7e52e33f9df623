"""Fixtures of the fault tests."""

from __future__ import annotations

import pytest

from slas.rewards import register
from slas.rewards.registry import unregister


@pytest.fixture
def brightness_reward():
    """A registered reward (mean brightness), for runs whose reward does not matter; yields its name."""
    name = "faults_brightness"
    register(name)(lambda: lambda images, prompts, **_: {"brightness": images.mean(dim=(1, 2, 3))})
    yield name
    unregister(name)
