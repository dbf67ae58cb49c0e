"""Shared fixtures: the real model, free ports, temporary homes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import ports
from tests.fixtures.model import model_path


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The real Gemma 3 270M GGUF, assembled from its PyPI package."""
    return model_path()


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return ports.free_port()
