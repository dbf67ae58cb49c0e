"""The queen's control plane: plan, apply (one at a time), status and down."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from rbee.apply.actions import ClusterEffects
from rbee.apply.executor import Emit, Outcome, execute
from rbee.clients import HiveClient
from rbee.config.models import Cluster, Hive
from rbee.errors import RbeeError
from rbee.observe.hive import observe, observe_hive
from rbee.plan.planner import Plan, plan
from rbee.queen.hives import LocalHives
from rbee.queen.registry import Registry
from rbee.queen.store import Store

__all__ = ["ApplyLocked", "Control"]

log = logging.getLogger(__name__)


class ApplyLocked(RbeeError):
    """Another apply holds the lock."""


class Control:
    """Plans and applies clusters against the world, holding the one apply lock."""

    def __init__(self, registry: Registry, store: Store, queen_url: str, token: str | None) -> None:
        self.registry = registry
        self.store = store
        self.queen_url = queen_url
        self.token = token
        self.local_hives = LocalHives(queen_url, token)
        self._lock = asyncio.Lock()
        self._holder: tuple[str, float] | None = None
        stored = store.desired()
        self._desired = Cluster.model_validate(stored) if stored else None

    @property
    def is_locked(self) -> bool:
        return self._lock.locked()

    def lock_message(self) -> str:
        if self._holder is None:
            return "another apply is running"
        who, since = self._holder
        return (
            f"another apply is running (held by {who} since "
            f"{time.strftime('%H:%M:%S', time.localtime(since))})"
        )

    @property
    def desired(self) -> Cluster | None:
        """The cluster of the last apply."""
        return self._desired

    def is_declared(self, model: str) -> bool:
        return self._desired is not None and any(m.name == model for m in self._desired.models)

    async def plan(self, cluster: Cluster) -> Plan:
        views = [self.registry.view(r) for r in self.registry.live()]
        observed = await observe(cluster, views, self.token)
        return plan(cluster, observed, self.queen_url)

    async def apply(self, cluster: Cluster, holder: str, emit: Emit, parallelism: int) -> Outcome:
        """Plan and execute under the apply lock; a second apply fails at once."""
        if self._lock.locked():
            raise ApplyLocked(self.lock_message())
        async with self._lock:
            self._holder = (holder, time.time())
            try:
                return await self._apply_locked(cluster, holder, emit, parallelism)
            finally:
                self._holder = None

    async def _apply_locked(
        self, cluster: Cluster, holder: str, emit: Emit, parallelism: int
    ) -> Outcome:
        the_plan = await self.plan(cluster)
        await emit(
            {
                "event": "plan",
                "plan": the_plan.model_dump(mode="json"),
                "summary": the_plan.counts(),
            }
        )
        self._desired = cluster
        apply_id = self.store.begin_apply(
            holder, the_plan.counts(), cluster.model_dump(mode="json")
        )
        hives = {h.name: h for h in cluster.hives}

        async def start_hive(name: str) -> None:
            await self.local_hives.start(hives[name])

        def worker_state(worker_id: str) -> str | None:
            record = self.registry.get(worker_id)
            return record.beat.state if record else None

        effects = ClusterEffects(
            token=self.token,
            start_hive=start_hive,
            worker_state=worker_state,
            forget_worker=self.registry.drop,
        )
        outcome = await execute(the_plan, effects, emit, parallelism)
        self.store.end_apply(apply_id, "ok" if outcome.ok else "failed")
        return outcome

    async def status(self) -> dict[str, Any]:
        """Hives of the last apply (with whether they answer) and the live workers."""
        hives: list[dict[str, Any]] = []
        if self._desired is not None:
            facts = await asyncio.gather(
                *(observe_hive(h, self.token) for h in self._desired.hives)
            )
            for hive, fact in zip(self._desired.hives, facts, strict=True):
                hives.append(
                    {
                        "name": hive.name,
                        "mode": hive.effective_mode,
                        "url": hive.url,
                        "state": "online" if fact.running else "offline",
                        "models": [m.name for m in fact.models],
                        "worker_processes": len(fact.workers),
                        "error": fact.error,
                    }
                )
        workers = [self.registry.view(r).model_dump() for r in self.registry.live()]
        return {"queen": {"url": self.queen_url}, "hives": hives, "workers": workers}

    async def down(self, cluster: Cluster | None) -> dict[str, Any]:
        """Stop every worker on the hives of `cluster` and of the last apply, then local hives."""
        if self._lock.locked():
            raise ApplyLocked("an apply is running; wait for it before `rbee down`")
        known = {h.name: h for c in (self._desired, cluster) if c is not None for h in c.hives}
        hives = list(known.values())
        stopped = await asyncio.gather(*(self._stop_workers(h) for h in hives))
        stopped_hives = [
            h.name for h in hives if h.effective_mode == "local" and await self.local_hives.stop(h)
        ]
        return {"stopped_workers": sum(stopped), "stopped_hives": stopped_hives}

    async def _stop_workers(self, hive: Hive) -> int:
        async with HiveClient(hive.url, self.token, timeout=30.0) as client:
            try:
                procs = await client.processes()
            except RbeeError:
                return 0
            for proc in procs:
                self.registry.drop(proc.worker_id)
            await asyncio.gather(*(client.kill(p.pid) for p in procs))
            return len(procs)
