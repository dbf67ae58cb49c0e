"""The queen's hive client over an injected transport: the hive's app in this process
(`httpx.ASGITransport`), no socket, no TLS: for tests of what the queen asks a hive, not of how
it gets there."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import rbee
from rbee.catalog.artifact import ArtifactCatalog
from rbee.clients import HIVES, HiveClient
from rbee.hive.app import create_app
from rbee.hive.binaries import WorkerBinaryCatalog


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[None]:
    app = create_app(
        "h1",
        catalog=ArtifactCatalog(tmp_path / "models"),
        binaries=WorkerBinaryCatalog(tmp_path / "workers"),
    )
    HIVES.transport = httpx.ASGITransport(app=app)
    try:
        yield
    finally:
        HIVES.transport = None


def test_the_hive_client_reaches_an_in_process_hive(in_process: None) -> None:
    async def ask() -> tuple[str | None, str, int, int]:
        async with HiveClient("https://h1.invalid:7835", "h1") as hive:
            health = await hive.health()
            state = await hive.state()
        return health.name, health.version, len(state.models), len(state.workers)

    assert asyncio.run(ask()) == ("h1", rbee.__version__, 0, 0)


def test_calls_of_one_loop_share_one_client_per_hive(in_process: None) -> None:
    async def clients() -> tuple[bool, bool]:
        first = HIVES.client("https://h1.invalid:7835", "h1")
        again = HIVES.client("https://h1.invalid:7835", "h1")
        other = HIVES.client("https://h1.invalid:7835", "h2")  # another identity: its own
        await HIVES.close()
        return first is again, first is other

    assert asyncio.run(clients()) == (True, False)
