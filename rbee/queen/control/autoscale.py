"""The autoscaler: within each deployment's range of replicas (`replicas: {min, max}`), the
queen spawns workers for queued requests and stops idle ones (`idle_ttl`).

Scale up. Admission calls `demand` when a request of a model with a range must wait (no free
slot, or no worker at all: it waits rather than get a 503). Counting the slots already coming
(workers loading, spawns under way), the autoscaler spawns only what the queue needs beyond
them, never past `max` on a hive: N requests at once on 1-slot workers spawn min(N, max)
workers, two on a 2-slot model spawn one. The hive is the deployment's one with the most free
memory (RAM, or the GPU's for cuda, less what spawns under way will take) that fits the
worker's estimate (weights and KV cache); the replica is the lowest free index. The spawn is
the create action a plan would hold, run by apply's own effects, so the worker is the one apply
would have made. The request waits in the queue (`queue_timeout`, then 504); the new worker's
heartbeat hands it the slot. After `rbee down` nothing is spawned until the next apply.

Scale down. Every second, the workers of a range whose last request ended more than
`idle_ttl` ago are retired, least recently used first, never below `min` on a hive, and not
while an apply or a heal holds the lock, nor while the model has requests waiting.

Retire (`retire`, also `POST /v1/workers/{id}/retire`). The worker drains (no new request, its
requests in flight finish), then its hive stops it. A fixed count's retired worker is missing
to the next plan: `rbee apply`, or self-heal, spawns it again; a range's is the queen's to
replace, on demand or up to `min`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rbee.apply.executor import Effects
from rbee.config.models import Cluster, Deployment, Hive
from rbee.errors import RbeeError
from rbee.observe.hive import observe_hive
from rbee.plan.observed import HiveFacts
from rbee.plan.placement import free_bytes, vram_bytes
from rbee.plan.planner import scale_up_action
from rbee.plan.resources import parse_worker_id, worker_address, worker_id
from rbee.queen.control.control import Control
from rbee.queen.serve.metrics import Metrics
from rbee.queen.serve.worker import WorkerRecord
from rbee.wire import ApplyEvent
from rbee.wire.plan import Action

__all__ = ["DRAIN_TIMEOUT_S", "EVICT_EVERY_S", "Autoscaler"]

log = logging.getLogger(__name__)

#: How often idle workers are looked for.
EVICT_EVERY_S = 1.0
#: A retired worker still busy after this long is stopped anyway (it drains on SIGTERM itself).
DRAIN_TIMEOUT_S = 300.0
_DRAIN_POLL_S = 0.05

HiveFactsOf = Callable[[Hive], Awaitable[HiveFacts]]


@dataclass(eq=False)
class _Spawn:
    """A worker being spawned on demand: its hive and replica index once chosen."""

    deployment: Deployment
    started: float
    hive: str | None = None
    index: int | None = None
    worker_id: str | None = None


class Autoscaler:
    """Spawns workers on demand and retires idle or unwanted ones (see the module's docstring).

    `waiting` counts a model's requests waiting for a slot (`Admission.waiting`, which calls
    `demand`). `effects` and `facts` are the seams to the hives (apply's effects and
    `GET /v1/state` by default); tests of the decisions alone swap them.
    """

    def __init__(
        self,
        control: Control,
        metrics: Metrics,
        waiting: Callable[[str], int],
        *,
        effects: Callable[[], Effects] | None = None,
        facts: HiveFactsOf | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._control = control
        self._registry = control.registry
        self._waiting = waiting
        self._metrics = metrics
        self._effects = effects or control.worker_effects
        self._facts = facts or (observe_hive)
        self._clock = clock
        self._spawns: list[_Spawn] = []
        self._retiring: set[str] = set()
        self._placing = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cluster: Cluster | None = None
        self._ranges: dict[str, list[Deployment]] = {}

    # --- scale up --------------------------------------------------------------------------

    def elastic(self, model: str) -> bool:
        """Whether a deployment of `model` has a range of replicas in the last apply."""
        return model in self._elastic()

    def demand(self, model: str) -> None:
        """A request of `model` waits: spawn the workers its queue needs beyond the slots
        already coming, within each deployment's `max` per hive. Synchronous, so two requests
        arriving together count each other's spawns."""
        deployments = self._elastic().get(model)
        if not deployments:
            return
        records = [r for r in self._registry.live() if r.beat.model == model]
        known = {r.beat.worker_id for r in records}
        spawns = [
            s for s in self._spawns if s.deployment.model == model and s.worker_id not in known
        ]
        coming = sum(r.beat.slots_total for r in records if r.beat.state == "loading")
        coming += sum(s.deployment.slots for s in spawns)
        short = self._waiting(model) - coming
        if short <= 0:
            return
        for deployment in deployments:
            room = self._room(deployment, records, spawns)
            while short > 0 and room > 0:
                self._start(_Spawn(deployment, self._clock()))
                short -= deployment.slots
                room -= 1

    def _elastic(self) -> dict[str, list[Deployment]]:
        """The deployments with a range of replicas, by model (as of the last apply)."""
        desired = self._control.desired
        if desired is not self._cluster:
            self._cluster = desired
            self._ranges = {}
            for deployment in desired.deployments if desired else []:
                if deployment.elastic is not None:
                    self._ranges.setdefault(deployment.model, []).append(deployment)
        return self._ranges

    def _room(
        self, deployment: Deployment, records: list[WorkerRecord], spawns: list[_Spawn]
    ) -> int:
        """How many more workers `deployment` may have, over all its hives."""
        assert self._cluster is not None and deployment.elastic is not None
        hives = self._cluster.hive_names(deployment)
        # Its workers' ids start `HIVE.KEY.` (one str.startswith: demand runs per request).
        prefixes = tuple(worker_id(hive, deployment.key, 0)[:-1] for hive in hives)
        running = sum(r.beat.worker_id.startswith(prefixes) for r in records)
        key = deployment.key
        pending = sum(1 for s in spawns if s.deployment is deployment or s.deployment.key == key)
        return deployment.elastic.max * len(hives) - running - pending

    def _start(self, spawn: _Spawn) -> None:
        self._spawns.append(spawn)
        self._track(self._scale_up(spawn))

    def _track(self, job: Awaitable[None]) -> None:
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _scale_up(self, spawn: _Spawn) -> None:
        deployment, desired = spawn.deployment, self._cluster
        assert desired is not None and deployment.elastic is not None
        model = deployment.model
        try:
            if (suspended := self._control.store.suspended()) is not None:
                # Stopped on purpose: nothing starts again until the next apply.
                log.info("event=scale_up_suspended model=%s why=%r", model, suspended)
                self._metrics.scale_ups.labels(model, "suspended").inc()
                return
            async with self._placing:  # one choice at a time: each sees the ones before
                hive = await self._place(desired, spawn)
            if hive is None or spawn.index is None:
                self._metrics.scale_ups.labels(model, "no_room").inc()
                return
            why = f"a request waits (replicas {deployment.elastic})"
            action = scale_up_action(
                desired, hive, deployment, spawn.index, self._control.queen_url, why
            )
            log.info("event=scale_up worker=%s hive=%s model=%s", spawn.worker_id, hive.name, model)
            await self._effects().run(action, _log_event)
        except Exception as exc:
            self._metrics.scale_ups.labels(model, "failed").inc()
            error = exc.message if isinstance(exc, RbeeError) else repr(exc)
            log.warning("event=scale_up_failed worker=%s error=%s", spawn.worker_id, error)
        else:
            self._metrics.scale_ups.labels(model, "ok").inc()
            self._metrics.scale_up_seconds.labels(model).observe(self._clock() - spawn.started)
        finally:
            self._spawns.remove(spawn)

    async def _place(self, desired: Cluster, spawn: _Spawn) -> Hive | None:
        """Choose the hive and replica index of `spawn` (set on it); None when no hive of the
        deployment has room, its model and worker binary, and the memory for one more."""
        deployment = spawn.deployment
        assert deployment.elastic is not None
        names = desired.hive_names(deployment)
        hives = [h for h in desired.hives if h.name in names]
        facts = await asyncio.gather(*(self._facts(h) for h in hives))
        best: tuple[tuple[int, int], Hive, int] | None = None
        for order, (hive, fact) in enumerate(zip(hives, facts, strict=True)):
            entry = next((m for m in fact.models if m.name == deployment.model), None)
            if (
                not fact.running
                or entry is None
                or not any(b.name == deployment.worker for b in fact.worker_binaries)
            ):
                continue
            taken = self._taken(hive.name, deployment, fact)
            if len(taken) >= deployment.elastic.max:
                continue
            need = vram_bytes(entry, deployment.slots, deployment.ctx_size) or entry.size_bytes
            starting = sum(s.hive == hive.name and s is not spawn for s in self._spawns)
            free = free_bytes(fact, deployment.device)
            if free is not None:
                free -= starting * need
                if free < need:
                    log.info("event=scale_up_skips hive=%s need=%d free=%d", hive.name, need, free)
                    continue
            rank = (free if free is not None else 0, -order)
            if best is None or rank > best[0]:
                index = next(i for i in range(len(taken) + 1) if i not in taken)
                best = (rank, hive, index)
        if best is None:
            log.warning(
                "event=scale_up_no_room deployment=%s hives=%s", deployment.key, ",".join(names)
            )
            return None
        _, hive, spawn.index = best
        spawn.hive = hive.name
        spawn.worker_id = worker_id(hive.name, deployment.key, spawn.index)
        return hive

    def _taken(self, hive: str, deployment: Deployment, fact: HiveFacts) -> set[int]:
        """Replica indices of `deployment` on `hive` that run, heartbeat or are being spawned."""
        ids = [p.worker_id for p in fact.workers if p.model == deployment.model]
        ids += [r.beat.worker_id for r in self._registry.live() if r.beat.hive == hive]
        taken = {i for wid in ids if (i := parse_worker_id(hive, deployment.key, wid)) is not None}
        taken |= {
            s.index
            for s in self._spawns
            if s.hive == hive and s.deployment.key == deployment.key and s.index is not None
        }
        return taken

    # --- scale down and retire ------------------------------------------------------------

    async def run(self, every_s: float = EVICT_EVERY_S) -> None:
        """Retire idle workers every `every_s`, forever; spawns and drains under way are
        cancelled when this ends (the queen stops)."""
        try:
            while True:
                await asyncio.sleep(every_s)
                try:
                    self.evict_idle()
                except Exception:  # one bad pass must not end eviction
                    log.exception("event=idle_eviction_failed")
        finally:
            for task in list(self._tasks):
                task.cancel()

    def evict_idle(self) -> list[str]:
        """Retire the workers idle longer than their deployment's `idle_ttl`, least recently
        used first, down to `min` on each hive; the ids retired."""
        desired = self._control.desired
        chosen: list[tuple[WorkerRecord, str]] = []
        records = self._registry.live()
        for model, deployments in self._elastic().items():
            if desired is None or self._waiting(model):
                continue
            for deployment in deployments:
                for hive in desired.hive_names(deployment):
                    chosen += self._idle(deployment, hive, records)
        if not chosen or self._control.is_locked:
            return []
        for record, why in chosen:
            self.retire(record.beat.worker_id, why, reason="idle")
        return [record.beat.worker_id for record, _ in chosen]

    def _idle(
        self, deployment: Deployment, hive: str, records: list[WorkerRecord]
    ) -> list[tuple[WorkerRecord, str]]:
        """The workers of `deployment` on `hive` to retire for idleness, and why."""
        ttl, elastic = deployment.idle_ttl, deployment.elastic
        if ttl is None or elastic is None:
            return []
        staying = [
            r
            for r in records
            if r.beat.hive == hive
            and r.beat.model == deployment.model
            and not r.draining
            and parse_worker_id(hive, deployment.key, r.beat.worker_id) is not None
        ]
        idle = []
        for record in staying:
            idle_for = self._registry.idle_for(record)
            if record.beat.state == "idle" and idle_for is not None and idle_for >= ttl:
                idle.append((record, f"idle for {idle_for:.0f} s (idle_ttl {ttl:g} s)"))
        idle.sort(key=lambda pair: pair[0].last_used)
        return idle[: max(0, len(staying) - elastic.min)]

    def retire(self, worker_id: str, why: str, reason: str = "retire") -> WorkerRecord | None:
        """Drain the live worker `worker_id`, then have its hive stop it (in the background);
        None when no live worker has that id. RbeeError when its hive is not one the queen
        knows (nothing is drained then)."""
        record = self._registry.get(worker_id)
        if record is None:
            return None
        url = self._hive_url(record.beat.hive)
        if url is None:
            raise RbeeError(
                f"worker {worker_id} runs on hive {record.beat.hive!r}, which no apply declared",
                hint="stop it on its hive, or apply a cluster that declares that hive",
            )
        record.draining = True
        if worker_id not in self._retiring:
            self._retiring.add(worker_id)
            self._track(self._stop_drained(record, url, why, reason))
        return record

    async def _stop_drained(self, record: WorkerRecord, url: str, why: str, reason: str) -> None:
        beat = record.beat
        log.info("event=worker_draining worker=%s in_flight=%d why=%r", beat.worker_id,
                 record.in_flight, why)  # fmt: skip
        try:
            deadline = self._clock() + DRAIN_TIMEOUT_S
            while record.in_flight and self._clock() < deadline:
                await asyncio.sleep(_DRAIN_POLL_S)
            stop = Action(
                address=self._address(record),
                kind="worker",
                op="delete",
                hive=beat.hive,
                reason=f"stop: {why}",
                hive_url=url,
                model=beat.model,
                pid=beat.pid,
            )
            await self._effects().run(stop, _log_event)
        except Exception as exc:
            # Not stopped: it serves on rather than sit unused.
            record.draining = False
            error = exc.message if isinstance(exc, RbeeError) else repr(exc)
            log.warning("event=worker_stop_failed worker=%s error=%s", beat.worker_id, error)
        else:
            self._metrics.workers_retired.labels(beat.model, reason).inc()
            log.info("event=worker_retired worker=%s why=%r", beat.worker_id, why)
        finally:
            self._retiring.discard(beat.worker_id)
            self._registry.stopped(beat.worker_id)

    def _hive_url(self, name: str) -> str | None:
        desired = self._control.desired
        known = [*(desired.hives if desired else []), *self._control.hive_registry.hives()]
        return next((h.url for h in known if h.name == name), None)

    def _address(self, record: WorkerRecord) -> str:
        """`worker.HIVE.KEY[i]` of a worker a deployment declares, else `worker.HIVE.ID`."""
        beat = record.beat
        for deployment in self._cluster.deployments if self._cluster else []:
            index = parse_worker_id(beat.hive, deployment.key, beat.worker_id)
            if deployment.model == beat.model and index is not None:
                return worker_address(beat.hive, deployment.key, index)
        return f"worker.{beat.hive}.{beat.worker_id}"


async def _log_event(event: ApplyEvent) -> None:
    if event.event in ("failed", "retry", "spawned"):
        log.info("event=autoscale_%s %s", event.event, event.model_dump_json(exclude={"event"}))
