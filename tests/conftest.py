"""Shared fixtures: the real model, free ports, temporary homes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.fixtures.model import model_path


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The real Gemma 3 270M GGUF, assembled from its PyPI package."""
    return model_path()


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
