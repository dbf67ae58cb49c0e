"""The queen's hive registry (SQLite) and the monitor that checks every hive's /health."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from rbee.clients import HiveClient, HiveTimeout, hive_identity
from rbee.config.models import Hive
from rbee.defaults import HIVE_CHECK_INTERVAL_S
from rbee.errors import RbeeError
from rbee.pki import due
from rbee.wire import Capabilities, HiveRecord

__all__ = ["HIVE_CHECK_INTERVAL_S", "HiveRecord", "HiveRegistry", "monitor_hives"]

log = logging.getLogger(__name__)


class HiveRegistry:
    """Hives the queen manages, with their last health check, in the queen's SQLite (the
    `hives` table of `Store`, on its connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def register(self, hives: list[Hive]) -> None:
        """Add or update these hives (their health state is kept)."""
        with self._db:
            for hive in hives:
                self._db.execute(
                    "INSERT INTO hives (name, spec) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec",
                    (hive.name, hive.model_dump_json()),
                )

    def remove(self, name: str) -> None:
        self._db.execute("DELETE FROM hives WHERE name = ?", (name,))

    def hives(self) -> list[Hive]:
        rows = self._db.execute("SELECT spec FROM hives ORDER BY name").fetchall()
        return [Hive.model_validate_json(row[0]) for row in rows]

    def records(self) -> list[HiveRecord]:
        rows = self._db.execute(
            "SELECT spec, state, version, pid, error, checked_at, online_at, capabilities "
            "FROM hives ORDER BY name"
        ).fetchall()
        return [_record(*row) for row in rows]

    def up(self) -> tuple[int, int]:
        """(hives that answered their last check, hives registered)."""
        online, total = self._db.execute(
            "SELECT COALESCE(SUM(state = 'online'), 0), COUNT(*) FROM hives"
        ).fetchone()
        return int(online), int(total)

    def get(self, name: str) -> HiveRecord | None:
        return next((r for r in self.records() if r.name == name), None)

    def set_capabilities(self, name: str, capabilities: Capabilities) -> None:
        self._db.execute(
            "UPDATE hives SET capabilities = ? WHERE name = ?",
            (capabilities.model_dump_json(), name),
        )

    def mark(
        self,
        name: str,
        online: bool,
        *,
        version: str | None = None,
        pid: int | None = None,
        error: str | None = None,
    ) -> None:
        now = time.time()
        self._db.execute(
            "UPDATE hives SET state = ?, version = ?, pid = ?, error = ?, checked_at = ?, "
            "online_at = CASE WHEN ? THEN ? ELSE online_at END WHERE name = ?",
            ("online" if online else "offline", version, pid, error, now, online, now, name),
        )

    async def check(self, hive: Hive) -> HiveRecord | None:
        """Check one hive's /health now and record the result."""
        async with HiveClient(hive.url, hive.name, timeout=HiveTimeout.CHECK) as client:
            try:
                health = await client.health()
            except RbeeError as exc:
                previous = self.get(hive.name)
                if previous is not None and previous.state == "online":
                    log.warning("event=hive_offline hive=%s error=%r", hive.name, exc.message)
                self.mark(hive.name, False, error=exc.message)
            else:
                self.mark(hive.name, True, version=health.version, pid=health.pid)
                expires = health.tls_expires_at
                if expires is not None and due(expires, time.time()):
                    await self._renew(hive, client)
        return self.get(hive.name)

    async def _renew(self, hive: Hive, client: HiveClient) -> None:
        """Hand the hive a new identity (its certificate is in its last third)."""
        try:
            await client.renew(hive_identity(hive.name, hive.host))
        except RbeeError as exc:
            log.warning("event=hive_identity_not_renewed hive=%s error=%r", hive.name, exc.message)
        else:
            log.info("event=hive_identity_renewed hive=%s", hive.name)


async def monitor_hives(
    registry: HiveRegistry,
    interval_s: float = HIVE_CHECK_INTERVAL_S,
    on_offline: Callable[[str], None] = lambda name: None,
) -> None:
    """Check every registered hive's /health every `interval_s`, forever; `on_offline` hears
    of each hive that stops answering (once, as it goes)."""
    while True:
        hives = registry.hives()
        before = {r.name: r.state for r in registry.records()}
        records = await asyncio.gather(*(registry.check(h) for h in hives))
        for record in records:
            if (
                record is not None
                and record.state == "offline"
                and before.get(record.name) != "offline"
            ):
                on_offline(record.name)
        await asyncio.sleep(interval_s)


def _record(
    spec: str,
    state: Any,
    version: str | None,
    pid: int | None,
    error: str | None,
    checked_at: float | None,
    online_at: float | None,
    capabilities: str | None,
) -> HiveRecord:
    hive = Hive.model_validate_json(spec)
    return HiveRecord(
        name=hive.name,
        mode=hive.effective_mode,
        host=hive.host,
        url=hive.url,
        state=state,
        version=version,
        pid=pid,
        error=error,
        checked_at=checked_at,
        online_at=online_at,
        capabilities=Capabilities.model_validate_json(capabilities) if capabilities else None,
        spec=json.loads(spec),
    )
