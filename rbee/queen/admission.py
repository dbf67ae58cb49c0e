"""Admission: a request gets a free worker slot at once, or waits its turn in its model's queue.

The queues live in memory, one per model, first come first served and bounded by the model's
`serving.max_queue`. A slot given back goes straight to the first waiter (`pump`), so a freed
slot is never taken by a newcomer while others wait; a heartbeat that brings new capacity
(a worker done loading, a new worker) pumps too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from rbee.config.models import Serving
from rbee.queen.registry import Registry, WorkerRecord
from rbee.queen.scheduler import policy_for

__all__ = ["Admission", "NoWorker", "QueueFull", "QueueTimeout"]


class NoWorker(Exception):
    """No live worker serves the model (or none is loading it)."""


class QueueFull(Exception):
    """The model's queue holds `max_queue` requests already."""


class QueueTimeout(Exception):
    """No slot came free within the request's `queue_timeout`."""


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[WorkerRecord]
    exclude: frozenset[str]


class Admission:
    """Hands out worker slots of the registry, queueing requests while every slot is taken."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._queues: dict[str, deque[_Waiter]] = {}
        self._serving: dict[str, Serving] = {}

    def configure(self, serving: dict[str, Serving]) -> None:
        """Each declared model's settings (from the last apply); others get the defaults."""
        self._serving = dict(serving)

    def serving(self, model: str) -> Serving:
        return self._serving.get(model) or _DEFAULT

    def depths(self) -> dict[str, int]:
        return {model: len(queue) for model, queue in self._queues.items()}

    async def acquire(
        self, model: str, serving: Serving, deadline: float, exclude: frozenset[str] = frozenset()
    ) -> WorkerRecord:
        """A claimed slot of a worker of `model` (not one in `exclude`), waiting in the queue
        until the loop's time `deadline` at the latest."""
        record = self.registry.claim(model, policy_for(serving), exclude)
        if record is not None:
            return record
        if not self.registry.serves(model):
            raise NoWorker(model)
        queue = self._queues.setdefault(model, deque())
        if len(queue) >= serving.max_queue:
            raise QueueFull(model)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), exclude)
        queue.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter.future
        except TimeoutError:
            raise QueueTimeout(model) from None
        except BaseException:
            # Cancelled (the client left) just as a slot was handed over: give it on.
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())
            raise
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
            if waiter in queue:
                queue.remove(waiter)

    def release(self, record: WorkerRecord) -> None:
        """Give a claimed slot back; the model's first waiter gets it."""
        record.in_flight -= 1
        self.pump(record.beat.model)

    def pump(self, model: str) -> None:
        """Hand free slots of `model`'s workers to its waiters, first come first served."""
        queue = self._queues.get(model)
        if not queue:
            return
        policy = policy_for(self.serving(model))
        while queue:
            waiter = queue[0]
            if waiter.future.done():
                queue.popleft()
                continue
            record = self.registry.claim(model, policy, waiter.exclude)
            if record is None:
                return
            queue.popleft()
            waiter.future.set_result(record)


_DEFAULT = Serving()
