"""The hive registry lives in the queen's SQLite and records each health check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rbee import clients
from rbee.config.models import Hive
from rbee.queen.control.hive_registry import HiveRegistry
from rbee.queen.control.store import Store
from tests.fixtures.pki import authority, identity
from tests.fixtures.ports import free_port


def test_registered_hives_survive_a_queen_restart(tmp_path: Path) -> None:
    db = tmp_path / "queen.db"
    store = Store(db)
    HiveRegistry(store.connection).register([Hive(name="gpu1", host="10.0.0.11", port=7835)])
    store.close()
    again = HiveRegistry(Store(db).connection)
    [record] = again.records()
    assert (record.name, record.mode, record.url, record.state) == (
        "gpu1",
        "network",
        "https://10.0.0.11:7835",
        "unknown",
    )


def test_a_hive_that_does_not_answer_is_marked_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clients, "_identity", None)  # restored after: the queen's, for now
    clients.use_identity(identity("queen", "queen"), authority())
    registry = HiveRegistry(Store(tmp_path / "queen.db").connection)
    hive = Hive(name="local", host="127.0.0.1", port=free_port())
    registry.register([hive])
    record = asyncio.run(registry.check(hive))
    assert record is not None
    assert record.state == "offline"
    assert record.error and "unreachable" in record.error
    assert record.checked_at is not None and record.online_at is None


def test_removed_hives_are_forgotten(tmp_path: Path) -> None:
    registry = HiveRegistry(Store(tmp_path / "queen.db").connection)
    registry.register([Hive(name="a", host="localhost"), Hive(name="b", host="localhost")])
    registry.remove("a")
    assert [h.name for h in registry.hives()] == ["b"]
