"""The worker registry: what the queen knows of workers, from their heartbeats only (RAM).

It also holds the queen's own count of requests in flight per worker: a slot is claimed here
(`claim`, synchronous, so two requests never take the same slot) and given back by admission.
A worker whose heartbeats stop is announced once (`on_lost`, from `watch`): the request path
cuts what is in flight there and self-heal looks at its hive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from rbee.queen.serve.worker import Address, Policy, WorkerRecord
from rbee.wire import Heartbeat, WorkerView
from rbee.wire.prefix import EMPTY, Prefix

__all__ = ["HEARTBEAT_INTERVAL_S", "LOST_CHECK_S", "UNHEALTHY_S", "Registry"]

HEARTBEAT_INTERVAL_S = 2.0
#: How long a worker that failed a request is passed over (its heartbeats do not lift it).
UNHEALTHY_S = 10.0
_ROUTABLE = frozenset({"idle", "busy"})
_SERVING = frozenset({"loading", "idle", "busy"})
#: How often `watch` looks for workers whose heartbeats stopped.
LOST_CHECK_S = 1.0


class Registry:
    """Workers by id; one is dropped after `missed` heartbeats go unseen."""

    def __init__(
        self,
        interval_s: float = HEARTBEAT_INTERVAL_S,
        missed: int = 3,
        clock: Callable[[], float] = time.monotonic,
        on_lost: Callable[[WorkerRecord], None] = lambda record: None,
    ) -> None:
        """`on_lost`: told of each worker whose heartbeats stopped, once (from `watch`)."""
        self._ttl = interval_s * missed
        self._clock = clock
        self._on_lost = on_lost
        # Wall time from which a worker that never beat here is silent: a restarted queen
        # first gives every worker one TTL to find it.
        self.heard_from = time.time() + self._ttl
        self._workers: dict[str, WorkerRecord] = {}
        # Workers dropped on purpose, by id → pid: a stopping worker's last beats are ignored.
        self._retired: dict[str, int] = {}
        self._lost: list[WorkerRecord] = []
        # Workers whose heartbeats stopped, by id → pid, until that id beats again or is
        # retired: the planner replaces such a process when its hive still lists it.
        self._silenced: dict[str, int] = {}
        # Drained workers whose stop is under way, shown (`stopping`) until it is done.
        self._stopping: dict[str, WorkerRecord] = {}

    def beat(self, heartbeat: Heartbeat) -> WorkerRecord | None:
        """Record a heartbeat; the queen's own in-flight count and health mark survive it."""
        if self._retired.get(heartbeat.worker_id) == heartbeat.pid:
            return None
        self._silenced.pop(heartbeat.worker_id, None)
        record = self._workers.get(heartbeat.worker_id)
        if record is None or record.beat.pid != heartbeat.pid:
            record = self._workers[heartbeat.worker_id] = WorkerRecord(heartbeat, self._clock())
        else:
            if (heartbeat.url, heartbeat.socket) != (record.beat.url, record.beat.socket):
                record.address = Address.of(heartbeat.url, heartbeat.socket)
            record.heard(heartbeat, self._clock())
        return record

    def live(self) -> list[WorkerRecord]:
        """Workers heard from within the TTL, expired ones forgotten."""
        now = self._clock()
        expired = [wid for wid, rec in self._workers.items() if now - rec.last_seen > self._ttl]
        for wid in expired:
            record = self._workers.pop(wid)
            self._lost.append(record)
            self._silenced[wid] = record.beat.pid
        return list(self._workers.values())

    async def watch(self, every_s: float = LOST_CHECK_S) -> None:
        """Every `every_s`, announce the workers whose heartbeats stopped (`on_lost`), forever."""
        while True:
            await asyncio.sleep(every_s)
            self.announce_lost()

    def announce_lost(self) -> None:
        """Tell `on_lost` of each worker whose heartbeats stopped since the last call, once."""
        self.live()
        lost, self._lost = self._lost, []
        for record in lost:
            self._on_lost(record)

    def silenced(self) -> dict[str, int]:
        """Workers (id → pid) whose heartbeats stopped and have not come back."""
        self.live()
        return dict(self._silenced)

    def get(self, worker_id: str) -> WorkerRecord | None:
        return next((rec for rec in self.live() if rec.beat.worker_id == worker_id), None)

    def stopping(self, worker_id: str) -> WorkerRecord | None:
        """The drained worker `worker_id` while its stop is under way (it is no longer live:
        nothing routes to it, and a replacement of that id registers as usual)."""
        return self._stopping.get(worker_id)

    def drop(self, worker_id: str) -> None:
        """Forget a worker until its next heartbeat (it refused a connection)."""
        self._workers.pop(worker_id, None)

    def retire(self, worker_id: str) -> None:
        """Forget a worker that is being stopped: beats still coming from that process are
        ignored; a new process with the same id (a replacement) registers as usual."""
        record = self._workers.pop(worker_id, None)
        self._silenced.pop(worker_id, None)
        if record is not None:
            self._retired[worker_id] = record.beat.pid
            if record.draining:
                self._stopping[worker_id] = record

    def stopped(self, worker_id: str) -> None:
        """The stop of a drained worker is over (done or failed)."""
        self._stopping.pop(worker_id, None)

    def mark_unhealthy(self, record: WorkerRecord, reason: str, for_s: float = UNHEALTHY_S) -> None:
        """Pass `record` over for `for_s` seconds: it failed a request (timeout, reset, 5xx)."""
        record.unhealthy_until = self._clock() + for_s
        record.unhealthy_reason = reason

    def models(self) -> list[str]:
        """Models with at least one routable worker."""
        return sorted({rec.beat.model for rec in self.live() if rec.beat.state in _ROUTABLE})

    def serves(self, model: str) -> bool:
        """Whether a live, healthy worker serves `model` or is loading it: a request for it may
        wait for a slot rather than fail at once."""
        now = self._clock()
        return any(
            rec.beat.model == model
            and rec.beat.state in _SERVING
            and not rec.draining
            and rec.unhealthy_until <= now
            and now - rec.last_seen <= self._ttl
            for rec in self._workers.values()
        )

    def claim(
        self,
        model: str,
        policy: Policy,
        exclude: frozenset[str] = frozenset(),
        prefix: Prefix = EMPTY,
    ) -> WorkerRecord | None:
        """Take a free slot of a routable, healthy worker serving `model`, chosen by `policy`
        for a prompt that begins with `prefix`, or None when every slot is taken. The caller
        gives it back with `release`."""
        candidates = self.free(model, exclude)
        if not candidates:
            return None
        chosen = candidates[0] if len(candidates) == 1 else policy.choose(candidates, prefix)
        now = self._clock()
        chosen.picked_at = now
        chosen.in_flight += 1
        if prefix.hashes:
            chosen.sent(prefix, now)
        return chosen

    def free(self, model: str, exclude: frozenset[str] = frozenset()) -> list[WorkerRecord]:
        """The routable, healthy workers of `model` with a free slot (not those in `exclude`)."""
        now = self._clock()
        return [
            rec
            for rec in self._workers.values()
            if rec.beat.model == model
            and rec.in_flight < rec.beat.slots_total
            and rec.beat.state in _ROUTABLE
            and not rec.draining
            and rec.unhealthy_until <= now
            and now - rec.last_seen <= self._ttl
            and rec.beat.worker_id not in exclude
        ]

    def release(self, record: WorkerRecord) -> None:
        """Give back a slot taken by `claim`: the worker was in use until now."""
        record.in_flight -= 1
        record.last_used = self._clock()

    def drain(self, worker_id: str) -> WorkerRecord | None:
        """Take a live worker out of rotation for good (None when there is no such worker):
        its requests in flight finish, no new one is given to it."""
        record = self.get(worker_id)
        if record is not None:
            record.draining = True
        return record

    def idle_for(self, record: WorkerRecord) -> float | None:
        """Seconds since `record` last finished a request (or registered); None while a request
        runs on it (relayed by the queen, or reported by its heartbeat)."""
        if record.in_flight or record.beat.slots_busy:
            return None
        return self._clock() - record.last_used

    def view(self, record: WorkerRecord) -> WorkerView:
        now = self._clock()
        idle_for = self.idle_for(record)
        beat = record.beat.model_dump(exclude={"prefixes"})  # for routing, not for reading
        if record.draining:
            beat["state"] = "draining"
        return WorkerView(
            **beat,
            idle_s=None if idle_for is None else round(idle_for, 3),
            last_seen_s=round(now - record.last_seen, 3),
            in_flight=record.in_flight,
            healthy=record.unhealthy_until <= now,
            unhealthy_reason=record.unhealthy_reason if record.unhealthy_until > now else None,
        )
