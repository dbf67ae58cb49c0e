"""The worker registry: heartbeats in, least-loaded routable workers out, TTL of 3 beats."""

from __future__ import annotations

from rbee.queen.registry import Registry
from rbee.wire import Heartbeat, WorkerState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _beat(wid: str, busy: int = 0, state: WorkerState = "idle", model: str = "m") -> Heartbeat:
    return Heartbeat(
        worker_id=wid,
        hive="local",
        model=model,
        worker_binary="cpu",
        url=f"http://127.0.0.1/{wid}",
        pid=1,
        device="cpu",
        state=state,
        slots_total=2,
        slots_busy=busy,
    )


def test_worker_is_dropped_after_three_missed_heartbeats() -> None:
    clock = Clock()
    registry = Registry(interval_s=2.0, missed=3, clock=clock)
    registry.beat(_beat("a"))
    clock.now += 5.9
    assert [r.beat.worker_id for r in registry.live()] == ["a"]
    clock.now += 0.2
    assert registry.live() == []


def test_pick_prefers_the_least_busy_worker() -> None:
    registry = Registry()
    registry.beat(_beat("a", busy=2, state="busy"))
    registry.beat(_beat("b", busy=1, state="busy"))
    registry.beat(_beat("c", busy=0))
    picked = registry.pick("m")
    assert picked is not None and picked.beat.worker_id == "c"


def test_pick_counts_requests_the_queen_is_relaying() -> None:
    registry = Registry()
    registry.beat(_beat("a"))
    registry.beat(_beat("b"))
    first = registry.pick("m")
    assert first is not None
    first.in_flight += 1
    second = registry.pick("m")
    assert second is not None and second.beat.worker_id != first.beat.worker_id


def test_loading_and_draining_workers_are_not_routed() -> None:
    registry = Registry()
    registry.beat(_beat("a", state="loading"))
    registry.beat(_beat("b", state="draining"))
    assert registry.pick("m") is None
    assert registry.models() == []


def test_pick_only_returns_workers_of_the_model() -> None:
    registry = Registry()
    registry.beat(_beat("a", model="other"))
    assert registry.pick("m") is None
    assert registry.models() == ["other"]


def test_heartbeat_keeps_the_queens_in_flight_count() -> None:
    registry = Registry()
    registry.beat(_beat("a"))
    record = registry.pick("m")
    assert record is not None
    record.in_flight = 1
    registry.beat(_beat("a", busy=1, state="busy"))
    again = registry.get("a")
    assert again is not None and again.in_flight == 1


def test_equally_idle_workers_take_turns() -> None:
    clock = Clock()
    registry = Registry(clock=clock)
    for wid in ("a", "b", "c"):
        registry.beat(_beat(wid))
    picked = []
    for _ in range(6):
        clock.now += 0.01
        record = registry.pick("m")
        assert record is not None
        picked.append(record.beat.worker_id)
    assert sorted(picked[:3]) == ["a", "b", "c"]
    assert picked[3:] == picked[:3]


def test_a_dropped_worker_stays_dropped_while_its_process_drains() -> None:
    registry = Registry()
    registry.beat(_beat("a"))
    registry.retire("a")
    registry.beat(_beat("a", state="draining"))
    assert registry.live() == []
    replacement = _beat("a").model_copy(update={"pid": 2})
    registry.beat(replacement)
    assert [r.beat.pid for r in registry.live()] == [2]


def test_a_worker_dropped_for_refusing_a_connection_returns_with_its_next_beat() -> None:
    registry = Registry()
    registry.beat(_beat("a"))
    registry.drop("a")
    assert registry.live() == []
    registry.beat(_beat("a"))
    assert [r.beat.worker_id for r in registry.live()] == ["a"]
