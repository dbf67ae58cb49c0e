"""The worker registry: what the queen knows of workers, from their heartbeats only (RAM)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rbee.wire import Heartbeat, WorkerView

__all__ = ["HEARTBEAT_INTERVAL_S", "Registry", "WorkerRecord"]

HEARTBEAT_INTERVAL_S = 2.0
_ROUTABLE = frozenset({"idle", "busy"})


@dataclass
class WorkerRecord:
    beat: Heartbeat
    last_seen: float
    in_flight: int = 0
    picked_at: float = 0.0

    @property
    def load(self) -> float:
        """Fraction of slots in use, counting what the queen relays now and what the worker says."""
        busy = max(self.in_flight, self.beat.slots_busy)
        return busy / self.beat.slots_total


class Registry:
    """Workers by id; one is dropped after `missed` heartbeats go unseen."""

    def __init__(
        self,
        interval_s: float = HEARTBEAT_INTERVAL_S,
        missed: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = interval_s * missed
        self._clock = clock
        self._workers: dict[str, WorkerRecord] = {}
        # Workers dropped on purpose, by id → pid: a stopping worker's last beats are ignored.
        self._retired: dict[str, int] = {}

    def beat(self, heartbeat: Heartbeat) -> None:
        """Record a heartbeat; the queen's own in-flight count survives it."""
        if self._retired.get(heartbeat.worker_id) == heartbeat.pid:
            return
        record = self._workers.get(heartbeat.worker_id)
        if record is None or record.beat.pid != heartbeat.pid:
            self._workers[heartbeat.worker_id] = WorkerRecord(heartbeat, self._clock())
        else:
            record.beat = heartbeat
            record.last_seen = self._clock()

    def live(self) -> list[WorkerRecord]:
        """Workers heard from within the TTL, expired ones forgotten."""
        now = self._clock()
        expired = [wid for wid, rec in self._workers.items() if now - rec.last_seen > self._ttl]
        for wid in expired:
            del self._workers[wid]
        return list(self._workers.values())

    def get(self, worker_id: str) -> WorkerRecord | None:
        return next((rec for rec in self.live() if rec.beat.worker_id == worker_id), None)

    def drop(self, worker_id: str) -> None:
        """Forget a worker until its next heartbeat (it refused a connection)."""
        self._workers.pop(worker_id, None)

    def retire(self, worker_id: str) -> None:
        """Forget a worker that is being stopped: beats still coming from that process are
        ignored; a new process with the same id (a replacement) registers as usual."""
        record = self._workers.pop(worker_id, None)
        if record is not None:
            self._retired[worker_id] = record.beat.pid

    def models(self) -> list[str]:
        """Models with at least one routable worker."""
        return sorted({rec.beat.model for rec in self.live() if rec.beat.state in _ROUTABLE})

    def pick(self, model: str, exclude: frozenset[str] = frozenset()) -> WorkerRecord | None:
        """The least loaded routable worker serving `model`, or None."""
        candidates = [
            rec
            for rec in self.live()
            if rec.beat.model == model
            and rec.beat.state in _ROUTABLE
            and rec.beat.worker_id not in exclude
        ]
        if not candidates:
            return None
        # Among equally loaded workers the one picked longest ago wins: requests spread evenly.
        chosen = min(candidates, key=lambda rec: (rec.load, rec.in_flight, rec.picked_at))
        chosen.picked_at = self._clock()
        return chosen

    def view(self, record: WorkerRecord) -> WorkerView:
        return WorkerView(
            **record.beat.model_dump(),
            last_seen_s=round(self._clock() - record.last_seen, 3),
            in_flight=record.in_flight,
        )
