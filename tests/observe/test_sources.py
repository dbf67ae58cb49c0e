"""hf:// sources resolved while planning: one HEAD each, against a local Hub."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from rbee.config.models import Model
from rbee.observe.sources import resolve_sources
from tests.fixtures.hub import fake_hub

REPO = "rbee-test/tiny-GGUF"


def test_sources_resolve_concurrently_to_sha256_commit_and_size_or_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = tmp_path / "tiny.gguf"
    blob.write_bytes(os.urandom(4096))
    models = [
        Model(name="tiny", source=f"hf://{REPO}/tiny.gguf"),
        Model(name="gone", source=f"hf://{REPO}/gone.gguf"),
        Model(name="local", source=blob.as_uri()),
    ]
    for hub in fake_hub():
        served = hub.add(REPO, "tiny.gguf", blob)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        facts = asyncio.run(resolve_sources(models))
        heads = [m for m, path, _ in hub.requests if "/resolve/" in path]
    assert sorted(facts) == [f"hf://{REPO}/gone.gguf", f"hf://{REPO}/tiny.gguf"]
    tiny = facts[f"hf://{REPO}/tiny.gguf"]
    assert (tiny.sha256, tiny.size_bytes, tiny.revision) == (
        served.sha256,
        served.size,
        hub.commit(REPO),
    )
    gone = facts[f"hf://{REPO}/gone.gguf"]
    assert gone.error is not None and "no file gone.gguf" in gone.error
    assert not gone.transient
    assert heads == ["HEAD", "HEAD"]  # metadata only: no byte of either file
    assert hub.sent == 0


def test_an_unreachable_hub_is_transient_and_blocks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    [facts] = asyncio.run(resolve_sources([Model(name="m", source=f"hf://{REPO}/m.gguf")])).values()
    assert facts.transient and facts.error is not None
