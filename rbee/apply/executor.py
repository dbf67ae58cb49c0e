"""The executor: walks a plan's dependency graph with bounded parallelism, streaming events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import Any, Protocol

from rbee.errors import RbeeError
from rbee.plan.planner import Action, Plan

__all__ = ["Effects", "Emit", "Outcome", "execute"]

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Awaitable[None]]


class Effects(Protocol):
    """What the executor does to the world, one method per kind of action."""

    async def run(self, action: Action, emit: Emit) -> None: ...


@dataclass
class Outcome:
    """How an apply ended: the addresses that succeeded, failed (with cause) and were skipped."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


async def execute(plan: Plan, effects: Effects, emit: Emit, parallelism: int = 10) -> Outcome:
    """Run every action once its dependencies succeeded; a failure skips its dependents."""
    actions = {a.address: a for a in plan.actions}
    graph = TopologicalSorter(
        {a.address: [d for d in a.depends_on if d in actions] for a in plan.actions}
    )
    graph.prepare()
    outcome = Outcome()
    gate = asyncio.Semaphore(max(1, parallelism))
    running: dict[asyncio.Task[None], str] = {}

    async def run_one(action: Action) -> None:
        async with gate:
            started = time.monotonic()
            await emit({"event": "start", "address": action.address, "op": action.op})
            await effects.run(action, emit)
            elapsed = round(time.monotonic() - started, 2)
            await emit({"event": "done", "address": action.address, "elapsed_s": elapsed})

    while graph.is_active():
        for address in graph.get_ready():
            action = actions[address]
            blocked = [d for d in action.depends_on if d in outcome.failed or d in outcome.skipped]
            if blocked:
                outcome.skipped.append(address)
                await emit({"event": "skipped", "address": address, "because": blocked})
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
                message = error.message if isinstance(error, RbeeError) else repr(error)
                if not isinstance(error, RbeeError):
                    log.error("event=action_crashed address=%s", address, exc_info=error)
                outcome.failed[address] = message
                await emit({"event": "failed", "address": address, "error": message})
            graph.done(address)
    return outcome
