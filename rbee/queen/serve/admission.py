"""Admission: a request gets a free worker slot at once, or waits its turn in its model's queue.

The queues live in memory, one per model, first come first served and bounded by the model's
`serving.max_queue`. A slot given back goes straight to the first waiter (`pump`), so a freed
slot is never taken by a newcomer while others wait; a heartbeat that brings new capacity
(a worker done loading, a new worker) pumps too. Each model has a second queue for batch
waiters (jobs, `rbee.queen.serve.jobs`): they get a slot only when no interactive one (every
OpenAI request) waits.

With `routing: prefix`, a freed slot goes to the waiter among the first few whose prompt that
worker's cache holds most of, rather than to the first (which may have its history cached on
another worker); a waiter passed over that often is served first whatever it holds.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from rbee.config.models import Serving
from rbee.queen.serve.registry import Registry
from rbee.queen.serve.scheduler import PrefixAware, policy_for
from rbee.queen.serve.worker import WorkerRecord
from rbee.wire.jobs import Priority
from rbee.wire.prefix import EMPTY, Prefix

__all__ = ["Admission", "NoWorker", "QueueFull", "QueueTimeout", "Scaler"]


class NoWorker(Exception):
    """No live worker serves the model (or none is loading it)."""


class QueueFull(Exception):
    """The model's queue holds `max_queue` requests already."""


class QueueTimeout(Exception):
    """No slot came free within the request's `queue_timeout`."""


class Scaler(Protocol):
    """What admission asks of the autoscaler (`rbee.queen.control.autoscale`)."""

    def elastic(self, model: str) -> bool:
        """Whether the queen scales `model`'s workers (a range of replicas is declared)."""
        ...

    def demand(self, model: str) -> None:
        """A request of `model` is queued: spawn workers if the queue needs more slots."""
        ...


#: The waiters at the head of a queue a freed slot may go to (`routing: prefix`), and how many
#: times the first may be passed over.
PREFIX_WINDOW = 8


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[WorkerRecord]
    exclude: frozenset[str]
    prefix: Prefix = EMPTY
    passed_over: int = 0


class Admission:
    """Hands out worker slots of the registry, queueing requests while every slot is taken."""

    def __init__(
        self,
        registry: Registry,
        serving: Callable[[str], Serving | None] = lambda model: None,
        scaler: Scaler | None = None,
    ) -> None:
        """`serving`: a declared model's settings (`Control.serving`, from the last apply);
        `scaler` spawns workers of models with a range of replicas for requests that wait."""
        self.registry = registry
        self._serving = serving
        self._scaler = scaler
        self._queues: dict[str, deque[_Waiter]] = {}
        self._batch_queues: dict[str, deque[_Waiter]] = {}

    def serving(self, model: str) -> Serving:
        """`model`'s settings: as declared, else the defaults."""
        return self._serving(model) or _DEFAULT

    def depths(self) -> dict[str, int]:
        depths = {model: len(queue) for model, queue in self._queues.items()}
        for model, queue in self._batch_queues.items():
            depths[model] = depths.get(model, 0) + len(queue)
        return depths

    async def acquire(
        self,
        model: str,
        serving: Serving,
        deadline: float,
        exclude: frozenset[str] = frozenset(),
        priority: Priority = "interactive",
        prefix: Prefix = EMPTY,
    ) -> WorkerRecord:
        """A claimed slot of a worker of `model` (not one in `exclude`) for a prompt beginning
        with `prefix`, waiting in the queue of its `priority` until the loop's time `deadline`
        at the latest."""
        record = self.registry.claim(model, policy_for(serving), exclude, prefix)
        if record is not None:
            return record
        # A model the queen scales waits for the worker it spawns rather than fail at once.
        scaler = self._scaler if self._scaler is not None and self._scaler.elastic(model) else None
        if scaler is None and not self.registry.serves(model):
            raise NoWorker(model)
        queues = self._queues if priority == "interactive" else self._batch_queues
        queue = queues.setdefault(model, deque())
        if len(queue) >= serving.max_queue:
            raise QueueFull(model)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), exclude, prefix)
        queue.append(waiter)
        if scaler is not None:
            scaler.demand(model)
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
        self.registry.release(record)
        self.pump(record.beat.model)

    def waiting(self, model: str) -> int:
        """Requests of `model` waiting for a slot now (interactive and batch)."""
        return len(self._queues.get(model) or ()) + len(self._batch_queues.get(model) or ())

    def pump(self, model: str) -> None:
        """Hand free slots of `model`'s workers to its waiters: interactive ones first, then
        batch ones, first come first served within each."""
        for queue in (self._queues.get(model), self._batch_queues.get(model)):
            if queue and not self._hand_out(model, queue):
                return

    def _hand_out(self, model: str, queue: deque[_Waiter]) -> bool:
        """Free slots to `queue`'s waiters in order; False when the slots ran out first."""
        policy = policy_for(self.serving(model))
        while queue:
            waiter = queue[0]
            if waiter.future.done():
                queue.popleft()
                continue
            if isinstance(policy, PrefixAware):
                waiter = self._best_placed(model, queue)
            record = self.registry.claim(model, policy, waiter.exclude, waiter.prefix)
            if record is None:
                return False
            queue.remove(waiter)
            waiter.future.set_result(record)
        return True

    def _best_placed(self, model: str, queue: deque[_Waiter]) -> _Waiter:
        """Of the first `PREFIX_WINDOW` waiters, the one a free worker's cache suits best (the
        first on ties, and the first once it was passed over `PREFIX_WINDOW` times)."""
        first = queue[0]
        free = self.registry.free(model)
        if first.passed_over >= PREFIX_WINDOW or len(queue) == 1 or not free:
            return first
        best, best_score = first, _placement(first, free)
        for waiter in itertools.islice(queue, 1, PREFIX_WINDOW):
            if waiter.future.done():
                continue
            score = _placement(waiter, free)
            if score > best_score:
                best, best_score = waiter, score
        if best is not first:
            first.passed_over += 1
        return best


def _placement(waiter: _Waiter, free: list[WorkerRecord]) -> float:
    """The share of `waiter`'s prompt the best of the `free` workers (those it may use) holds."""
    usable = (rec for rec in free if rec.beat.worker_id not in waiter.exclude)
    return max((waiter.prefix.share(rec.prefixes) for rec in usable), default=0.0)


_DEFAULT = Serving()
