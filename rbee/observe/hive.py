"""Facts from hives: is the daemon up, which models and worker processes does it list."""

from __future__ import annotations

import asyncio
import time

from rbee.clients import HiveClient, HiveTimeout
from rbee.config.models import Hive
from rbee.errors import NotFoundError, RbeeError, UnavailableError
from rbee.observe.ssh import probe
from rbee.plan.observed import HiveFacts, Observed
from rbee.remote.connect import SshConnections
from rbee.wire import HiveState, SshFacts, WorkerView

__all__ = ["observe", "observe_hive"]


async def observe_hive(hive: Hive) -> HiveFacts:
    """Ask one hive for its health and listings; an unreachable hive is `running=False`."""
    down = HiveFacts(name=hive.name, running=False, url=hive.url, mode=hive.effective_mode)
    async with HiveClient(hive.url, hive.name, timeout=HiveTimeout.LISTING) as client:
        state: HiveState | str
        try:
            state = await client.state()
        except UnavailableError:
            return down
        except NotFoundError:
            state = await _listed_one_by_one(client)
        except RbeeError as exc:
            return down.model_copy(update={"error": exc.message})
    if isinstance(state, str):
        return down.model_copy(update={"error": state})
    if state.health.service != "rbee-hive":
        error = f"{hive.url} answers as {state.health.service!r}, not rbee-hive"
        return down.model_copy(update={"error": error})
    return down.model_copy(
        update={
            "running": True,
            "models": state.models,
            "worker_binaries": state.worker_binaries,
            "workers": state.workers,
            "rpc_servers": state.rpc_servers,
            "capabilities": state.capabilities,
        }
    )


async def _listed_one_by_one(client: HiveClient) -> HiveState | str:
    """The state of a hive without `/v1/state` (older than it, or not a hive at all), from its
    health and each listing; an error message when it cannot be had."""
    try:
        health = await client.health()
        if health.service != "rbee-hive":
            return f"{client.url} answers as {health.service!r}, not rbee-hive"
        models, binaries, workers, caps = await asyncio.gather(
            client.models(), client.worker_binaries(), client.processes(), client.capabilities()
        )
    except RbeeError as exc:
        return exc.message
    return HiveState(
        health=health, models=models, worker_binaries=binaries, workers=workers, capabilities=caps
    )


async def observe(
    hives: list[Hive],
    registry: list[WorkerView],
    connections: SshConnections | None = None,
    ssh_concurrency: int = 10,
) -> Observed:
    """Observe these hives concurrently, stamped with the time of observation.

    With `connections`, network hives are also probed over SSH (at most `ssh_concurrency`
    at a time), reusing the run's connections.
    """
    at = time.time()
    gate = asyncio.Semaphore(ssh_concurrency)

    async def one(hive: Hive) -> HiveFacts:
        if connections is None or hive.effective_mode != "network":
            return await observe_hive(hive)

        async def probed() -> SshFacts:
            async with gate:
                return await probe(hive, connections=connections)

        ssh, facts = await asyncio.gather(probed(), observe_hive(hive))
        return facts.model_copy(update={"ssh": ssh})

    facts = await asyncio.gather(*(one(h) for h in hives))
    return Observed(at=at, hives={f.name: f for f in facts}, registry=registry)
