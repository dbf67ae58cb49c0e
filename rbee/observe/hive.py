"""Facts from hives: is the daemon up, which models and worker processes does it list."""

from __future__ import annotations

import asyncio

from rbee.clients import HiveClient
from rbee.config.models import Cluster, Hive
from rbee.errors import RbeeError, UnavailableError
from rbee.plan.observed import HiveFacts, Observed
from rbee.wire import WorkerView

__all__ = ["observe", "observe_hive"]


async def observe_hive(hive: Hive, token: str | None) -> HiveFacts:
    """Ask one hive for its health and listings; an unreachable hive is `running=False`."""
    async with HiveClient(hive.url, token, timeout=5.0) as client:
        try:
            health = await client.health()
        except UnavailableError:
            return HiveFacts(name=hive.name, running=False)
        except RbeeError as exc:
            return HiveFacts(name=hive.name, running=False, error=exc.message)
        if health.service != "rbee-hive":
            error = f"{hive.url} answers as {health.service!r}, not rbee-hive"
            return HiveFacts(name=hive.name, running=False, error=error)
        try:
            models, workers = await asyncio.gather(client.models(), client.processes())
        except RbeeError as exc:
            return HiveFacts(name=hive.name, running=False, error=exc.message)
    return HiveFacts(name=hive.name, running=True, models=models, workers=workers)


async def observe(cluster: Cluster, registry: list[WorkerView], token: str | None) -> Observed:
    """Observe every declared hive concurrently."""
    facts = await asyncio.gather(*(observe_hive(h, token) for h in cluster.hives))
    return Observed(hives={f.name: f for f in facts}, registry=registry)
