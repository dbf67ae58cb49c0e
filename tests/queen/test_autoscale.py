"""The autoscaler's decisions: how many workers a queue needs, on which hive and replica, which
idle ones go, and how a retired worker drains.

Real Registry, Admission, Control (on a temporary SQLite) and Autoscaler; only the hives are
scripted (`_Hives`): a spawn heartbeats as `loading`, then `idle`, as a real worker does. The
real processes are in tests/e2e/test_autoscale.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rbee.apply.executor import Emit
from rbee.config.models import Hive
from rbee.plan.observed import HiveFacts
from rbee.queen.control.autoscale import Autoscaler
from rbee.queen.control.control import Control
from rbee.queen.control.hive_registry import HiveRegistry
from rbee.queen.control.store import Store
from rbee.queen.serve.admission import Admission, NoWorker, QueueTimeout
from rbee.queen.serve.metrics import Metrics
from rbee.queen.serve.registry import Registry
from rbee.queen.serve.scheduler import LEAST_LOADED
from rbee.queen.serve.worker import WorkerRecord
from rbee.wire import Capabilities, Heartbeat, ModelEntry, WorkerBinaryEntry, WorkerProcess
from rbee.wire.plan import Action

MODEL = "m"
GIB = 1 << 30


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Hives:
    """Scripted hives: a create action's worker heartbeats `loading`, then `idle` after
    `load_s`; a delete action forgets it. Each hive has `ram` bytes free."""

    def __init__(self, registry: Registry, ram: dict[str, int], load_s: float = 0.05) -> None:
        self.registry = registry
        self.admission: Admission | None = None
        self.ram = ram
        self.load_s = load_s
        self.actions: list[Action] = []
        self.procs: dict[str, list[WorkerProcess]] = {name: [] for name in ram}

    async def run(self, action: Action, emit: Emit) -> None:
        self.actions.append(action)
        if action.op == "delete":
            assert action.pid is not None
            gone = [p for p in self.procs[action.hive] if p.pid == action.pid]
            self.procs[action.hive] = [p for p in self.procs[action.hive] if p not in gone]
            for proc in gone:
                self.registry.retire(proc.worker_id)
            return
        assert action.spawn is not None
        spawn, pid = action.spawn, 100 + len(self.actions)
        self.procs[action.hive].append(
            WorkerProcess(
                **spawn.model_dump(exclude={"model_path", "port"}),
                pid=pid,
                model_path="/m.gguf",
                port=9000 + pid,
                started_at=0.0,
            )
        )
        self.beat(spawn.worker_id, action.hive, pid, "loading")
        await asyncio.sleep(self.load_s)
        self.beat(spawn.worker_id, action.hive, pid, "idle", spawn.slots)

    def beat(
        self, worker_id: str, hive: str, pid: int, state: Any = "idle", slots: int = 1
    ) -> WorkerRecord | None:
        record = self.registry.beat(
            Heartbeat(
                worker_id=worker_id,
                hive=hive,
                model=MODEL,
                worker_binary="cpu",
                url=f"http://127.0.0.1:{9000 + pid}",
                pid=pid,
                device="cpu",
                state=state,
                slots_total=slots,
                slots_busy=0,
            )
        )
        if self.admission is not None:
            self.admission.pump(MODEL)  # as the heartbeat route does
        return record

    async def facts(self, hive: Hive) -> HiveFacts:
        return HiveFacts(
            name=hive.name,
            running=True,
            url=hive.url,
            models=[
                ModelEntry(
                    name=MODEL, source="file:///m.gguf", sha256="a" * 64, size_bytes=GIB, path="/m"
                )
            ],
            worker_binaries=[
                WorkerBinaryEntry(
                    name="cpu", backend="cpu", python="python3", llama_cpp_version="0.3"
                )
            ],
            workers=list(self.procs[hive.name]),
            capabilities=Capabilities(
                hostname=hive.name,
                os="Linux",
                arch="x86_64",
                cpu_count=2,
                ram_total_bytes=64 * GIB,
                ram_available_bytes=self.ram[hive.name],
            ),
        )


class _Queen:
    """The queen's objects the autoscaler works with, for one applied cluster."""

    def __init__(self, db: Path, deployment: dict[str, Any], ram: dict[str, int]) -> None:
        cluster = {
            "hives": [{"name": name, "host": "127.0.0.1", "port": 7900 + i}
                      for i, name in enumerate(ram)],
            "models": [{"name": MODEL, "source": "file:///m.gguf"}],
            "worker_binaries": [{"name": "cpu"}],
            "deployments": [{"model": MODEL, "worker": "cpu", "hives": list(ram), **deployment}],
        }  # fmt: skip
        self.store = Store(db)
        self.store.end_apply(self.store.begin_apply("test", {}, cluster), "ok")
        self.clock = Clock()
        self.registry = Registry(clock=self.clock)
        hive_registry = HiveRegistry(self.store.connection)
        self.control = Control(self.registry, self.store, hive_registry, "http://q")
        self.hives = _Hives(self.registry, ram)
        self.scaler = Autoscaler(
            self.control,
            Metrics(self.registry, lambda: self.admission.depths(), lambda: (0, 0)),
            waiting=lambda model: self.admission.waiting(model),
            effects=lambda: self.hives,
            facts=self.hives.facts,
            clock=self.clock,
        )
        self.admission = Admission(self.registry, scaler=self.scaler)
        self.hives.admission = self.admission

    def spawned(self) -> list[str]:
        return [a.spawn.worker_id for a in self.hives.actions if a.spawn is not None]

    def stopped(self) -> list[int | None]:
        return [a.pid for a in self.hives.actions if a.op == "delete"]

    async def serve(self, count: int, hold_s: float = 0.05) -> list[str]:
        """`count` requests at once, each holding its slot `hold_s`; the workers that served."""

        async def one() -> str:
            serving = self.admission.serving(MODEL)
            loop = asyncio.get_running_loop()
            record = await self.admission.acquire(MODEL, serving, loop.time() + 5)
            await asyncio.sleep(hold_s)
            self.admission.release(record)
            return record.beat.worker_id

        return await asyncio.gather(*(one() for _ in range(count)))


@pytest.fixture
def queen(tmp_path: Path) -> Iterator[Any]:
    made: list[_Queen] = []

    def make(deployment: dict[str, Any], ram: dict[str, int] | None = None) -> _Queen:
        made.append(_Queen(tmp_path / f"q{len(made)}.db", deployment, ram or {"local": 8 * GIB}))
        return made[-1]

    yield make
    for one in made:
        one.store.close()


def test_requests_at_once_spawn_no_more_workers_than_max(queen: Any) -> None:
    q = queen({"replicas": {"min": 0, "max": 2}, "slots": 1})
    served = asyncio.run(q.serve(5))
    assert sorted(q.spawned()) == ["local.m.0", "local.m.1"]
    assert set(served) == {"local.m.0", "local.m.1"}


def test_two_requests_on_a_two_slot_model_spawn_one_worker(queen: Any) -> None:
    q = queen({"replicas": {"min": 0, "max": 3}, "slots": 2})
    assert asyncio.run(q.serve(2)) == ["local.m.0", "local.m.0"]
    assert q.spawned() == ["local.m.0"]


def test_a_queue_longer_than_the_coming_slots_spawns_for_the_rest(queen: Any) -> None:
    q = queen({"replicas": {"min": 0, "max": 4}, "slots": 2})
    asyncio.run(q.serve(5))  # 5 waiting, 2 slots a worker: 3 workers
    assert sorted(q.spawned()) == ["local.m.0", "local.m.1", "local.m.2"]


def test_a_free_slot_is_used_before_anything_is_spawned(queen: Any) -> None:
    q = queen({"replicas": {"min": 1, "max": 3}, "slots": 2})
    q.hives.beat("local.m.0", "local", 7, slots=2)
    assert asyncio.run(q.serve(2)) == ["local.m.0", "local.m.0"]
    assert q.spawned() == []


def test_a_model_with_a_range_and_no_worker_waits_where_a_fixed_one_is_refused(
    queen: Any,
) -> None:
    elastic = queen({"replicas": {"min": 0, "max": 1}})
    elastic.hives.load_s = 10.0  # the worker is not ready before the request gives up

    async def wait() -> None:
        serving = elastic.admission.serving(MODEL)
        await elastic.admission.acquire(MODEL, serving, asyncio.get_running_loop().time() + 0.2)

    with pytest.raises(QueueTimeout):  # the relay answers 504
        asyncio.run(wait())
    assert elastic.spawned() == ["local.m.0"]
    fixed = queen({"replicas": 1})
    with pytest.raises(NoWorker):  # the relay answers 503
        asyncio.run(fixed.admission.acquire(MODEL, fixed.admission.serving(MODEL), 0.0))


def test_nothing_is_spawned_after_rbee_down_until_the_next_apply(queen: Any) -> None:
    q = queen({"replicas": {"min": 0, "max": 1}})
    q.store.suspend("`rbee down`")

    async def wait() -> None:
        serving = q.admission.serving(MODEL)
        await q.admission.acquire(MODEL, serving, asyncio.get_running_loop().time() + 0.2)

    with pytest.raises(QueueTimeout):
        asyncio.run(wait())
    assert q.spawned() == []


def test_the_hive_with_the_most_free_memory_gets_the_lowest_free_replica(queen: Any) -> None:
    q = queen({"replicas": {"min": 0, "max": 3}, "slots": 1}, {"a": 4 * GIB, "b": 16 * GIB})
    q.hives.beat("b.m.0", "b", 7)
    q.hives.beat("b.m.0", "b", 7, state="busy")
    q.registry.claim(MODEL, LEAST_LOADED)  # b.m.0 serves one request already
    asyncio.run(q.serve(1))
    assert q.spawned() == ["b.m.1"]
    assert q.hives.actions[0].address == "worker.b.m[1]"


def test_a_hive_without_the_memory_for_one_more_worker_is_passed_over(queen: Any) -> None:
    q = queen({"replicas": {"min": 0, "max": 3}, "slots": 1}, {"a": GIB // 2, "b": 3 * GIB // 2})
    asyncio.run(q.serve(2))  # b fits one worker of 1 GiB, then one more would not fit
    assert q.spawned() == ["b.m.0"]


def test_idle_workers_are_retired_least_recently_used_first_down_to_min(queen: Any) -> None:
    q = queen({"replicas": {"min": 1, "max": 3}, "idle_ttl": "10s"})
    workers = ["local.m.0", "local.m.1", "local.m.2"]

    def tick(seconds: float) -> None:
        """Time passes; the workers still running heartbeat every half second."""
        for _ in range(int(seconds * 2)):
            q.clock.now += 0.5
            for pid, worker in enumerate(workers):
                if pid not in q.stopped():
                    q.hives.beat(worker, "local", pid)

    for pid, worker in enumerate(workers):
        q.hives.procs["local"].append(_proc(worker, pid))
    tick(0.5)
    for worker in ("local.m.2", "local.m.0", "local.m.1"):  # used in this order
        tick(1)
        record = q.registry.get(worker)
        assert record is not None
        record.in_flight += 1
        q.registry.release(record)
    tick(9.5)  # local.m.2 and local.m.0 have been idle 10 s or more; local.m.1 not
    assert asyncio.run(_evict(q)) == ["local.m.2", "local.m.0"]
    assert q.stopped() == [2, 0]
    tick(60)  # local.m.1 is idle too now, but min is 1
    assert asyncio.run(_evict(q)) == []


async def _evict(q: _Queen) -> list[str]:
    """One pass of idle eviction, and the stops it starts."""
    retired = q.scaler.evict_idle()
    await asyncio.sleep(0.2)
    return retired


def test_a_retired_worker_takes_no_new_request_and_stops_after_its_last(queen: Any) -> None:
    q = queen({"replicas": 2})
    q.hives.procs["local"].append(_proc("local.m.0", 5))
    q.hives.beat("local.m.0", "local", 5, slots=2)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        serving = q.admission.serving(MODEL)
        first = await q.admission.acquire(MODEL, serving, loop.time() + 1)
        assert q.scaler.retire("local.m.0", "test") is first
        with pytest.raises(NoWorker):  # a fixed count: no worker, no spawn
            await q.admission.acquire(MODEL, serving, loop.time() + 1)
        await asyncio.sleep(0.2)
        assert q.stopped() == []  # its request still runs
        q.admission.release(first)
        await asyncio.sleep(0.2)
        assert q.stopped() == [5]

    asyncio.run(scenario())
    assert q.scaler.retire("local.m.0", "again") is None  # gone from the registry


def _proc(worker_id: str, pid: int) -> WorkerProcess:
    return WorkerProcess(
        worker_id=worker_id,
        hive="local",
        model=MODEL,
        model_path="/m.gguf",
        queen_url="http://q",
        worker_binary="cpu",
        port=9000 + pid,
        slots=1,
        ctx_size=4096,
        device="cpu",
        pid=pid,
        started_at=0.0,
    )
