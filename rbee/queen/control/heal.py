"""Self-heal: between applies the queen keeps the last applied cluster converged.

A check observes the hives over HTTP, plans the last applied cluster against what it sees
(the same pure planner as `rbee plan`) and keeps only the plan's healing actions: start a
stopped hive, fetch a missing or damaged model or worker binary again, spawn a dead worker,
replace a hung one. Deletes, prunes, upgrades and spec changes are left to `rbee apply`, and
reported as why the cluster is degraded.

Checks run on events (a worker's heartbeats stopped, a hive stopped answering) and every
`self_heal.interval`. A heal holds the apply lock, asked of `Control` (never racing an
apply), and is recorded in history. A failed action is retried after a growing delay; a
worker respawned `CRASH_LIMIT` times within `CRASH_WINDOW_S` is left down and reported until
the next apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rbee.apply.lock import HEAL_HOLDER, ApplyLocked
from rbee.clients import HiveClient, HiveTimeout
from rbee.config.models import Cluster
from rbee.errors import RbeeError
from rbee.plan.planner import plan
from rbee.queen.control.control import Control
from rbee.wire import ApplyEvent, CrashLoop, LockState, SyncStatus
from rbee.wire.plan import Action, Plan

__all__ = ["CRASH_LIMIT", "CRASH_WINDOW_S", "Healer", "healing"]

log = logging.getLogger(__name__)

#: A worker respawned this many times within `CRASH_WINDOW_S` is left down.
CRASH_LIMIT = 3
CRASH_WINDOW_S = 300.0
#: A failed healing action is tried again after 2 s, 4 s, 8 s, … at most `MAX_RETRY_S`.
FIRST_RETRY_S = 2.0
MAX_RETRY_S = 300.0
#: Events arriving together (several workers of one dead hive) make one check.
_SETTLE_S = 0.2
_LOG_LINES = 15


def heals(action: Action) -> bool:
    """Whether self-heal may run `action` on its own (its dependencies aside)."""
    if action.op == "create":
        return not action.install  # installing rbee on a host is an apply's job
    if action.op == "replace":
        if action.kind == "model":
            return any(c.field == "file" for c in action.changes)  # damaged, not a new version
        # A hung worker, or one restarted for a re-fetched file: nothing declared changed.
        return action.kind == "worker" and not action.changes
    return False


def healing(actions: list[Action]) -> tuple[list[Action], list[Action]]:
    """Split actions into those self-heal may run and those left for `rbee apply`: an
    action that waits for one left out is left out too."""
    kept, _ = _without(
        [a for a in actions if heals(a)], {a.address for a in actions if not heals(a)}
    )
    return kept, [a for a in actions if a not in kept]


def _without(actions: list[Action], excluded: set[str]) -> tuple[list[Action], list[Action]]:
    """`actions` less those that wait, directly or not, for an address in `excluded`; and
    those."""
    excluded = set(excluded)
    kept = list(actions)
    changed = True
    while changed:
        changed = False
        for action in list(kept):
            if excluded.intersection(action.depends_on):
                kept.remove(action)
                excluded.add(action.address)
                changed = True
    return kept, [a for a in actions if a not in kept]


@dataclass
class _Track:
    """One address's healing record: consecutive failures and (workers) respawn times."""

    failures: int = 0
    retry_at: float = 0.0
    error: str | None = None
    respawns: deque[float] = field(default_factory=deque)
    crash_loop: CrashLoop | None = None


class Healer:
    """The queen's self-heal loop (`run`), woken by `poke` and by its interval."""

    def __init__(
        self,
        control: Control,
        on_action: Callable[[Action, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._control = control
        self._on_action = on_action or (lambda action, ok: None)
        self._clock = clock
        self._wake = asyncio.Event()
        self._triggers: list[str] = []
        self._tracks: dict[str, _Track] = {}
        self._spent: deque[float] = deque()  # when each healing action of the last hour ran
        self._apply_id: int | None = None
        self.sync = SyncStatus()
        # A queen just (re)started looks at once: its cluster may have changed while it was down.
        self.poke("the queen started")

    def poke(self, why: str) -> None:
        """Check soon: something happened (`why` goes into history if it leads to a heal)."""
        self._triggers.append(why)
        self._wake.set()

    @property
    def crash_loops(self) -> list[CrashLoop]:
        return [t.crash_loop for t in self._tracks.values() if t.crash_loop is not None]

    async def run(self) -> None:
        """Check on every poke and every `self_heal.interval`, forever."""
        while True:
            desired = self._control.desired
            interval = desired.self_heal.interval if desired else 30.0
            wait = min([interval, *self._due_in()])
            try:
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.05))
                await asyncio.sleep(_SETTLE_S)
            except TimeoutError:
                pass
            self._wake.clear()
            triggers, self._triggers = self._triggers, []
            try:
                await self.check("; ".join(dict.fromkeys(triggers)) or "periodic check")
            except Exception:  # one bad check must not end self-heal
                log.exception("event=self_heal_check_failed")

    def _due_in(self) -> list[float]:
        now = self._clock()
        return [
            t.retry_at - now
            for t in self._tracks.values()
            if t.crash_loop is None and t.retry_at > now
        ]

    async def check(self, trigger: str) -> None:
        """Compare the cluster with the last apply and heal what may be healed."""
        cluster = self._control.desired
        if cluster is None:
            self.sync = SyncStatus(state="unknown", reasons=["nothing applied yet"])
            return
        last = self._control.store.last_apply()
        if last is not None and last.id != self._apply_id:
            # A new apply: crash loops and back-offs start over.
            self._apply_id = last.id
            self._tracks.clear()
        enabled = cluster.self_heal.enabled
        suspended = self._control.store.suspended()
        if suspended is not None:
            self.sync = SyncStatus(
                state="suspended",
                reasons=[f"{suspended}: nothing is healed until the next apply"],
                self_heal=enabled,
                checked_at=time.time(),
            )
            return
        if self._control.is_locked:
            return  # an apply (or a heal) runs: it converges, and the next check looks again
        todo, reasons = await self._select(cluster, await self._plan(cluster))
        if todo and enabled:
            async with contextlib.AsyncExitStack() as held:
                try:
                    lock = await held.enter_async_context(self._control.locked(HEAL_HOLDER))
                except ApplyLocked:
                    return
                # Under the lock, plan again: an apply may have changed things since.
                cluster = self._control.desired or cluster
                todo, reasons = await self._select(cluster, await self._plan(cluster))
                if todo:
                    await self._heal(cluster, todo, trigger, lock)
                    self.poke("check after self-heal")
                    return
        elif todo:
            reasons += [f"{a.address}: {a.reason} (self-heal is off)" for a in todo]
        self.sync = SyncStatus(
            state="degraded" if reasons else "in_sync",
            reasons=reasons,
            self_heal=enabled,
            checked_at=time.time(),
            crash_loops=self.crash_loops,
        )

    async def _plan(self, cluster: Cluster) -> Plan:
        """The last applied cluster planned against what the hives list now."""
        observed = await self._control.observe_quick(cluster)
        return plan(cluster, observed, self._control.queen_url)

    async def _select(self, cluster: Cluster, the_plan: Plan) -> tuple[list[Action], list[str]]:
        """The healing actions due now, and why the cluster differs from the last apply
        beyond them."""
        heal, left = healing(the_plan.actions)
        reasons = [f"{n.address}: {n.message}" for n in the_plan.errors]
        reasons += [f"{a.address}: {a.reason} (needs `rbee apply`)" for a in left]
        now = self._clock()
        todo: list[Action] = []
        for action in heal:
            track = self._tracks.setdefault(action.address, _Track())
            if action.kind == "worker":
                while track.respawns and now - track.respawns[0] > CRASH_WINDOW_S:
                    track.respawns.popleft()
                if track.crash_loop is None and len(track.respawns) >= CRASH_LIMIT:
                    track.crash_loop = await self._crash_loop(action, track)
            if track.crash_loop is not None:
                loop = track.crash_loop
                reasons.append(
                    f"{action.address}: crash loop, died {loop.deaths} times in "
                    f"{loop.window_s / 60:.0f} min; left down until the next apply"
                )
            elif track.retry_at > now:
                reasons.append(
                    f"{action.address}: {track.error}; self-heal tries again in "
                    f"{track.retry_at - now:.0f} s"
                )
            else:
                todo.append(action)
        # What waits for an action not run now is not run either (the executor would not wait).
        todo, waiting = _without(todo, {a.address for a in heal if a not in todo})
        reasons += [f"{a.address}: waits for {', '.join(a.depends_on)}" for a in waiting]
        if any(a.kind == "hive" for a in todo):
            # Hives first, alone: once they answer, their listings say what else is missing
            # (workers outlive their hive and are adopted, not spawned again).
            todo = [a for a in todo if a.kind == "hive"]
        budget = cluster.self_heal.max_per_hour
        while self._spent and now - self._spent[0] > 3600.0:
            self._spent.popleft()
        room = max(0, budget - len(self._spent))
        if len(todo) > room:
            todo, _ = _without(todo[:room], {a.address for a in todo[room:]})
            reasons.append(
                f"self-heal reached max_per_hour ({budget}): "
                f"{len(heal) - len(todo)} actions wait for the next hour or an apply"
            )
        return todo, reasons

    async def _crash_loop(self, action: Action, track: _Track) -> CrashLoop:
        worker_id = action.spawn.worker_id if action.spawn else action.address
        tail = ""
        if action.hive_url is not None:
            try:
                async with HiveClient(
                    action.hive_url, action.hive, timeout=HiveTimeout.LISTING
                ) as hive:
                    tail = await hive.worker_log(worker_id, _LOG_LINES)
            except RbeeError as exc:
                tail = f"(its log could not be read: {exc.message})"
        loop = CrashLoop(
            worker_id=worker_id,
            hive=action.hive,
            address=action.address,
            deaths=len(track.respawns),
            window_s=CRASH_WINDOW_S,
            error=track.error,
            log_tail=tail,
        )
        log.warning(
            "event=self_heal_crash_loop worker=%s hive=%s deaths=%d error=%s",
            worker_id, action.hive, loop.deaths, track.error,
        )  # fmt: skip
        return loop

    async def _heal(
        self, cluster: Cluster, todo: list[Action], trigger: str, lock: LockState
    ) -> None:
        self.sync = SyncStatus(
            state="healing",
            reasons=[f"{a.address}: {a.reason}" for a in todo],
            checked_at=time.time(),
            crash_loops=self.crash_loops,
        )
        started = self._clock()
        log.info(
            "event=self_heal trigger=%r actions=%s",
            trigger, ",".join(a.address for a in todo),
        )  # fmt: skip
        for action in todo:
            self._spent.append(started)
            if action.kind == "worker":
                self._tracks[action.address].respawns.append(started)
        outcome = await self._control.heal(cluster, todo, trigger, lock, _log_event)
        now = self._clock()
        for action in todo:
            track = self._tracks[action.address]
            ok = action.address in outcome.done
            self._on_action(action, ok)
            if ok:
                track.failures, track.retry_at, track.error = 0, 0.0, None
            elif action.address in outcome.failed:
                track.failures += 1
                track.error = outcome.failed[action.address]
                track.retry_at = now + min(FIRST_RETRY_S * 2 ** (track.failures - 1), MAX_RETRY_S)
                if action.kind == "worker" and len(track.respawns) >= CRASH_LIMIT:
                    track.crash_loop = await self._crash_loop(action, track)
        log.info(
            "event=self_heal_done seconds=%.2f done=%d failed=%d skipped=%d",
            now - started, len(outcome.done), len(outcome.failed), len(outcome.skipped),
        )  # fmt: skip


async def _log_event(event: ApplyEvent) -> None:
    if event.event in ("failed", "retry", "done", "spawned"):
        log.info("event=self_heal_%s %s", event.event, event.model_dump_json(exclude={"event"}))
