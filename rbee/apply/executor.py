"""The executor: walks a plan's dependency graph with bounded parallelism, streaming events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import Protocol

import httpx
import tenacity

from rbee.errors import RbeeError
from rbee.wire import (
    ApplyEvent,
    DoneEvent,
    FailedEvent,
    RetryEvent,
    SkippedEvent,
    StartEvent,
)
from rbee.wire.plan import Action, Plan

__all__ = ["Effects", "Emit", "Outcome", "RetryPolicy", "execute", "is_transient"]

log = logging.getLogger(__name__)

Emit = Callable[[ApplyEvent], Awaitable[None]]

# Events that report a side effect a retry would repeat (a second worker process, say): once
# an attempt emitted one, its failure is final and the next apply converges from what it left.
_UNREPEATABLE = frozenset({"spawned"})


class Effects(Protocol):
    """What the executor does to the world, one method per kind of action."""

    async def run(self, action: Action, emit: Emit) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transiently failing action is tried again.

    The delays grow exponentially (0.5 s, 1 s, 2 s, … by default) plus a random jitter of up
    to `jitter_s`, so the actions of many hives that failed together do not retry in lockstep.
    """

    retries: int = 3
    first_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 30.0
    jitter_s: float = 0.5

    def wait(self) -> tenacity.wait.wait_base:
        """tenacity's wait strategy for these delays."""
        return tenacity.wait_exponential_jitter(
            multiplier=self.first_delay_s,
            exp_base=self.factor,
            max=self.max_delay_s,
            jitter=self.jitter_s,
        )


def is_transient(error: BaseException) -> bool:
    """Whether `error` may go away by itself: an unreachable daemon, a 5xx, a timeout."""
    if isinstance(error, RbeeError):
        return error.transient
    # Clients wrap most transport failures, but not every call: the raw ones count too.
    return isinstance(error, httpx.TransportError | ConnectionError | TimeoutError)


@dataclass
class Outcome:
    """How an apply ended: the addresses that succeeded, failed (with cause) and were skipped."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


async def execute(
    plan: Plan,
    effects: Effects,
    emit: Emit,
    parallelism: int = 10,
    retry: RetryPolicy = RetryPolicy(),
) -> Outcome:
    """Run every action once its dependencies succeeded; a failure skips its dependents.

    At most `parallelism` actions run at once. An action failing with a transient error is
    tried again after a growing delay (`retry`), without holding its slot while it waits,
    unless it already did something a retry would repeat (it emitted a `spawned` event).
    """
    actions = {a.address: a for a in plan.actions}
    graph = TopologicalSorter(
        {a.address: [d for d in a.depends_on if d in actions] for a in plan.actions}
    )
    graph.prepare()
    outcome = Outcome()
    gate = asyncio.Semaphore(max(1, parallelism))
    running: dict[asyncio.Task[None], str] = {}
    attempts: dict[str, int] = {}

    async def run_one(action: Action) -> None:
        started = time.monotonic()
        await emit(StartEvent(address=action.address, op=action.op))
        watch = _Watch(emit)

        def worth_retrying(error: BaseException) -> bool:
            return is_transient(error) and not watch.unrepeatable

        async def announce(state: tenacity.RetryCallState) -> None:
            assert state.outcome is not None and state.next_action is not None
            error = state.outcome.exception()
            assert error is not None
            delay = round(state.next_action.sleep, 3)
            log.warning(
                "event=action_retry address=%s attempt=%s delay_s=%s error=%s",
                action.address,
                state.attempt_number,
                delay,
                _message(error),
            )
            await emit(
                RetryEvent(
                    address=action.address,
                    attempt=state.attempt_number,
                    error=_message(error),
                    delay_s=delay,
                )
            )

        # The wait happens outside the gate: an action waiting to retry holds no slot.
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(retry.retries + 1),
            wait=retry.wait(),
            retry=tenacity.retry_if_exception(worth_retrying),
            before_sleep=announce,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                attempts[action.address] = attempt.retry_state.attempt_number
                watch = _Watch(emit)
                async with gate:
                    await effects.run(action, watch)
        elapsed = round(time.monotonic() - started, 2)
        await emit(DoneEvent(address=action.address, elapsed_s=elapsed))

    while graph.is_active():
        for address in graph.get_ready():
            action = actions[address]
            blocked = [d for d in action.depends_on if d in outcome.failed or d in outcome.skipped]
            if blocked:
                outcome.skipped.append(address)
                await emit(SkippedEvent(address=address, because=blocked))
                graph.done(address)
                continue
            running[asyncio.create_task(run_one(action))] = address
        if not running:
            continue
        finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
            address = running.pop(task)
            error = task.exception()
            if error is None:
                outcome.done.append(address)
            else:
                message = _message(error)
                if attempts[address] > 1:
                    message += f" (gave up after {attempts[address]} attempts)"
                if not isinstance(error, RbeeError):
                    log.error("event=action_crashed address=%s", address, exc_info=error)
                outcome.failed[address] = message
                await emit(FailedEvent(address=address, error=message))
            graph.done(address)
    return outcome


class _Watch:
    """An Emit that passes events on and notes whether one reported an unrepeatable effect."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self.unrepeatable = False

    async def __call__(self, event: ApplyEvent) -> None:
        self.unrepeatable = self.unrepeatable or event.event in _UNREPEATABLE
        await self._emit(event)


def _message(error: BaseException) -> str:
    return error.message if isinstance(error, RbeeError) else repr(error)
