"""The queen's control plane: plan, apply (one at a time), heal, status and down.

`Control` is the one owner of the apply lock: an apply route, self-heal and `rbee down` ask it
for the lock (`take_lock`, `locked`), and nothing else touches its row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from rbee.apply.actions import ClusterEffects
from rbee.apply.executor import Emit, Outcome, execute
from rbee.apply.lock import ApplyLock, ApplyLocked
from rbee.clients import HiveClient, HiveTimeout
from rbee.config.models import Cluster, Hive, Serving
from rbee.defaults import SSH_IDLE_S
from rbee.errors import RbeeError
from rbee.observe.hive import observe, observe_hive
from rbee.observe.sources import resolve_sources
from rbee.plan.desired import desired_after
from rbee.plan.digest import observed_digest
from rbee.plan.observed import Observed
from rbee.plan.planner import plan
from rbee.queen.control.hive_registry import HiveRegistry
from rbee.queen.control.hives import HiveLifecycle
from rbee.queen.control.store import Store
from rbee.queen.serve.registry import Registry
from rbee.remote.connect import SshConnections
from rbee.wire import (
    AppliedSource,
    ClusterStatus,
    DownResult,
    HiveStatus,
    LockEvent,
    LockState,
    PlanEvent,
    QueenInfo,
)
from rbee.wire.plan import Action, Plan

__all__ = ["ApplyLocked", "Control", "PlanOptions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanOptions:
    """How to plan: limit to targets, only report drift, override the YAML's prune."""

    targets: list[str] = field(default_factory=list)
    refresh_only: bool = False
    prune: bool | None = None


class Control:
    """Plans and applies clusters against the world, holding the one apply lock."""

    def __init__(
        self,
        registry: Registry,
        store: Store,
        hive_registry: HiveRegistry,
        queen_url: str,
        public_url: str | None = None,
    ) -> None:
        """`queen_url`: where hives and workers reach the queen (its cluster listener);
        `public_url`: where people and apps do (its front door; default the same)."""
        self.registry = registry
        self.store = store
        self.hive_registry = hive_registry
        self.queen_url = queen_url
        self.public_url = public_url or queen_url
        self.hive_lifecycle = HiveLifecycle(queen_url)
        # One pool for the queen's life: plans, applies and heals reuse their SSH connections.
        self.ssh = SshConnections(idle_s=SSH_IDLE_S)
        self._lock = ApplyLock(store.connection)
        self._held: LockState | None = None
        self._serving: dict[str, Serving] = {}
        live = self._lock.live()
        interrupted = store.interrupt_unfinished(live.apply_id if live else None)
        if interrupted:
            log.warning("event=applies_interrupted count=%s", interrupted)
        stored = store.desired()
        self._set_desired(Cluster.model_validate(stored) if stored else None)

    def _set_desired(self, cluster: Cluster | None) -> None:
        self._desired = cluster
        models = cluster.models if cluster else []
        self._serving = {m.name: s for m in models if cluster and (s := cluster.serving(m.name))}

    def serving(self, model: str) -> Serving | None:
        """`model`'s `serving:` settings in the last apply (None when it declares none)."""
        return self._serving.get(model)

    # --- the apply lock: its one owner ----------------------------------------------------

    @property
    def is_locked(self) -> bool:
        """Whether a live apply holds the lock (a stale lock does not count)."""
        return self._lock.live() is not None

    def lock_message(self) -> str:
        """The refusal a second apply gets right now, naming the holder."""
        live = self._lock.live()
        return ApplyLocked.held(live).message if live else "no apply is running"

    def current_lock(self) -> LockState | None:
        """The lock as it is, stale or not; None when no one holds it."""
        return self._lock.current()

    def force_unlock(self, lock_id: str) -> LockState:
        """Break the lock with ID `lock_id` (`rbee force-unlock`); LockNotFound if it is not
        the current lock's."""
        return self._lock.force_unlock(lock_id)

    async def take_lock(self, holder: str, timeout_s: float = 0.0) -> LockState:
        """Take the lock for `holder`, waiting up to `timeout_s` (ApplyLocked after that). The
        `apply` given it releases it; else `release_lock` must."""
        return await self._lock.acquire(holder, timeout_s)

    def release_lock(self, lock_id: str) -> None:
        """Give back a lock taken with `take_lock` that no apply took over."""
        self._lock.release(lock_id)

    @contextlib.asynccontextmanager
    async def locked(self, holder: str, timeout_s: float = 0.0) -> AsyncIterator[LockState]:
        """The lock, held for `holder` while the block runs (ApplyLocked when another holds it
        past `timeout_s`)."""
        held = await self._lock.acquire(holder, timeout_s)
        try:
            yield held
        finally:
            self._lock.release(held.id)

    @property
    def desired(self) -> Cluster | None:
        """The cluster of the last apply."""
        return self._desired

    def is_declared(self, model: str) -> bool:
        return self._desired is not None and any(m.name == model for m in self._desired.models)

    async def observe(self, cluster: Cluster, connections: SshConnections) -> Observed:
        """Facts about the declared hives and the ones the last apply declared (for prune);
        network hives are probed over SSH on `connections`."""
        views = [self.registry.view(r) for r in self.registry.live()]
        declared = {h.name for h in cluster.hives}
        previous = [
            h for h in (self._desired.hives if self._desired else []) if h.name not in declared
        ]
        observed, sources = await asyncio.gather(
            observe([*cluster.hives, *previous], views, connections),
            resolve_sources(cluster.models),
        )
        return observed.model_copy(
            update={
                "sources": sources,
                "silenced": self.registry.silenced(),
                "heard_from": self.registry.heard_from,
            }
        )

    async def observe_quick(self, cluster: Cluster) -> Observed:
        """What self-heal checks: each hive's listings and the heartbeats, over HTTP only (no
        SSH probe, no Hub request: a heal never upgrades or installs)."""
        views = [self.registry.view(r) for r in self.registry.live()]
        observed = await observe(cluster.hives, views)
        return observed.model_copy(
            update={"silenced": self.registry.silenced(), "heard_from": self.registry.heard_from}
        )

    async def plan(self, cluster: Cluster, options: PlanOptions | None = None) -> Plan:
        """Observe now and plan `cluster` against it."""
        return await self._plan(cluster, options or PlanOptions(), self.ssh)

    async def _plan(
        self, cluster: Cluster, options: PlanOptions, connections: SshConnections
    ) -> Plan:
        observed = await self.observe(cluster, connections)
        return plan(
            cluster,
            observed,
            self.queen_url,
            targets=options.targets,
            refresh_only=options.refresh_only,
            prune=options.prune,
        )

    async def apply(
        self,
        cluster: Cluster,
        holder: str,
        emit: Emit,
        parallelism: int,
        options: PlanOptions | None = None,
        saved: Plan | None = None,
        *,
        lock: LockState | None = None,
        lock_timeout_s: float = 0.0,
        source: AppliedSource | None = None,
    ) -> Outcome:
        """Plan (or check a saved plan) and execute under the apply lock.

        The lock is `lock` when the caller took it already, else taken here, waiting up to
        `lock_timeout_s` (ApplyLocked after that). It is released when the apply ends.
        """
        held = lock or await self._lock.acquire(holder, lock_timeout_s)
        self._held = held
        try:
            await emit(LockEvent(**held.model_dump()))
            return await self._apply_locked(
                cluster, holder, emit, parallelism, options, saved, self.ssh, source
            )
        except Exception as exc:
            error = exc.message if isinstance(exc, RbeeError) else repr(exc)
            self.store.fail_apply(held.id, holder, error)
            raise
        finally:
            self._held = None
            self._lock.release(held.id)

    async def _apply_locked(
        self,
        cluster: Cluster,
        holder: str,
        emit: Emit,
        parallelism: int,
        options: PlanOptions | None,
        saved: Plan | None,
        connections: SshConnections,
        source: AppliedSource | None = None,
    ) -> Outcome:
        if saved is None:
            the_plan = await self._plan(cluster, options or PlanOptions(), connections)
        else:
            now = observed_digest(await self.observe(cluster, connections))
            if now != saved.observed_digest:
                raise RbeeError(
                    "the plan is stale: the cluster changed since it was made; nothing was done",
                    hint="plan again: `rbee apply` shows the new plan, `rbee plan --out FILE` "
                    "saves it",
                )
            the_plan = saved
        await emit(PlanEvent(plan=the_plan.model_dump(mode="json")))
        previous = self._desired.hives if self._desired else []
        hives = {h.name: h for h in [*previous, *cluster.hives]}
        # A targeted apply changes its targets only: self-heal must not go on to build what
        # the target left out.
        desired = desired_after(self._desired, cluster, the_plan.targets)
        self._set_desired(desired)
        self.hive_registry.register(desired.hives)
        lock_id = self._held.id if self._held else None
        apply_id = self.store.begin_apply(
            holder,
            the_plan.counts(),
            desired.model_dump(mode="json"),
            lock_id=lock_id,
            source=source,
        )
        if lock_id is not None:
            self._lock.attach(lock_id, apply_id)

        effects = self._effects(hives, connections)
        outcome = await execute(the_plan, effects, emit, parallelism)
        # Hives that could not be observed were not planned: the apply did not converge.
        for error in the_plan.errors:
            outcome.failed[error.address] = error.message
        for action in the_plan.actions:
            if action.kind == "hive" and action.op == "delete" and action.address in outcome.done:
                self.hive_registry.remove(action.hive)
        await asyncio.gather(*(self.hive_registry.check(h) for h in cluster.hives))
        self._record(apply_id, outcome)
        return outcome

    def _record(self, entry_id: int, outcome: Outcome) -> None:
        """Close a history entry (apply or self-heal) with how it went."""
        self.store.end_apply(
            entry_id,
            "ok" if outcome.ok else "failed",
            done=outcome.done,
            failed=outcome.failed,
            skipped=outcome.skipped,
        )

    def worker_effects(self) -> ClusterEffects:
        """Apply's own effects on the hives of the last apply: the autoscaler spawns and stops
        workers through them, exactly as an apply would."""
        hives = self._desired.hives if self._desired else []
        return self._effects({h.name: h for h in hives}, self.ssh)

    def _effects(self, hives: dict[str, Hive], connections: SshConnections) -> ClusterEffects:
        """What the actions of an apply or a heal do, with `hives` by name."""

        async def start_hive(action: Action) -> None:
            await self.hive_lifecycle.start(
                hives[action.hive],
                install=action.install,
                upgrade=action.op == "replace",
                connections=connections,
            )

        async def stop_hive(action: Action) -> None:
            await self.hive_lifecycle.stop(
                hives[action.hive], uninstall=True, connections=connections
            )

        def worker_state(worker_id: str) -> str | None:
            record = self.registry.get(worker_id)
            return record.beat.state if record else None

        return ClusterEffects(
            start_hive=start_hive,
            stop_hive=stop_hive,
            worker_state=worker_state,
            forget_worker=self.registry.retire,
        )

    async def heal(
        self,
        cluster: Cluster,
        actions: list[Action],
        trigger: str,
        lock: LockState,
        emit: Emit,
        parallelism: int = 4,
    ) -> Outcome:
        """Run healing `actions` of `cluster` (the last applied) under `lock`, held by the
        caller's `locked` block; recorded in history as a `self-heal` entry."""
        the_plan = Plan(actions=actions)
        reasons = {a.address: f"{a.op}: {a.reason}" for a in actions}
        heal_id = self.store.begin_heal(the_plan.counts(), reasons, trigger, lock.id)
        self._lock.attach(lock.id, heal_id)
        try:
            effects = self._effects({h.name: h for h in cluster.hives}, self.ssh)
            outcome = await execute(the_plan, effects, emit, parallelism)
            # A hive started again is online now, not at the monitor's next look: if it dies
            # again before then, the monitor still sees it go offline.
            started = {a.hive for a in actions if a.kind == "hive" and a.address in outcome.done}
            await asyncio.gather(
                *(self.hive_registry.check(h) for h in cluster.hives if h.name in started)
            )
        except BaseException as exc:
            self.store.end_apply(heal_id, "failed", error=repr(exc))
            raise
        self._record(heal_id, outcome)
        return outcome

    async def status(self) -> ClusterStatus:
        """Hives of the last apply (with whether they answer) and the live workers."""
        hives: list[HiveStatus] = []
        if self._desired is not None:
            facts = await asyncio.gather(*(observe_hive(h) for h in self._desired.hives))
            for hive, fact in zip(self._desired.hives, facts, strict=True):
                hives.append(
                    HiveStatus(
                        name=hive.name,
                        mode=hive.effective_mode,
                        url=hive.url,
                        state="online" if fact.running else "offline",
                        models=[m.name for m in fact.models],
                        model_facts={
                            m.name: m.facts.describe() if m.facts else None for m in fact.models
                        },
                        gpus=fact.capabilities.gpus if fact.capabilities else [],
                        worker_processes=len(fact.workers),
                        rpc_servers=fact.rpc_servers,
                        error=fact.error,
                    )
                )
        workers = [self.registry.view(r) for r in self.registry.live()]
        return ClusterStatus(
            queen=QueenInfo(url=self.public_url),
            hives=hives,
            workers=workers,
            applied=self.store.last_apply(),
        )

    async def down(self, cluster: Cluster | None) -> DownResult:
        """Stop every worker on the hives of `cluster` and of the last apply, then local hives."""
        if (live := self._lock.live()) is not None:
            raise ApplyLocked(
                f"an apply is running ({live.describe()}); wait for it before `rbee down`"
            )
        # Stopped on purpose: self-heal starts nothing again until the next apply.
        self.store.suspend(f"`rbee down` at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        known = {h.name: h for c in (self._desired, cluster) if c is not None for h in c.hives}
        hives = list(known.values())
        stopped = await asyncio.gather(*(self._stop_workers(h) for h in hives))
        results = await asyncio.gather(
            *(self.hive_lifecycle.stop(h, connections=self.ssh) for h in hives),
            return_exceptions=True,
        )
        stopped_hives = [h.name for h, ok in zip(hives, results, strict=True) if ok is True]
        for hive, result in zip(hives, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("event=hive_stop_failed hive=%s error=%r", hive.name, result)
        return DownResult(stopped_workers=sum(stopped), stopped_hives=stopped_hives)

    async def _stop_workers(self, hive: Hive) -> int:
        async with HiveClient(hive.url, hive.name, timeout=HiveTimeout.ACTION) as client:
            try:
                procs = await client.processes()
            except RbeeError:
                return 0
            for proc in procs:
                self.registry.retire(proc.worker_id)
            await asyncio.gather(*(client.kill(p.pid) for p in procs))
            return len(procs)
