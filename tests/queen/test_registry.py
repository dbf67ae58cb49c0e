"""The worker registry: heartbeats in, free slots of routable workers claimed, TTL of 3 beats."""

from __future__ import annotations

from rbee.config.models import Serving
from rbee.queen.serve.registry import Registry
from rbee.queen.serve.scheduler import LEAST_LOADED, policy_for
from rbee.wire import Heartbeat, WorkerState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _beat(
    wid: str, busy: int = 0, state: WorkerState = "idle", model: str = "m", hive: str = "local"
) -> Heartbeat:
    return Heartbeat(
        worker_id=wid,
        hive=hive,
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


def test_claim_prefers_the_least_busy_worker() -> None:
    registry = Registry()
    registry.beat(_beat("a", busy=2, state="busy"))
    registry.beat(_beat("b", busy=1, state="busy"))
    registry.beat(_beat("c", busy=0))
    picked = registry.claim("m", LEAST_LOADED)
    assert picked is not None and picked.beat.worker_id == "c"


def test_claim_counts_requests_the_queen_is_relaying() -> None:
    registry = Registry()
    registry.beat(_beat("a"))
    registry.beat(_beat("b"))
    first = registry.claim("m", LEAST_LOADED)
    assert first is not None
    second = registry.claim("m", LEAST_LOADED)
    assert second is not None and second.beat.worker_id != first.beat.worker_id


def test_loading_and_draining_workers_are_not_routed() -> None:
    registry = Registry()
    registry.beat(_beat("a", state="loading"))
    registry.beat(_beat("b", state="draining"))
    assert registry.claim("m", LEAST_LOADED) is None
    assert registry.models() == []


def test_claim_only_returns_workers_of_the_model() -> None:
    registry = Registry()
    registry.beat(_beat("a", model="other"))
    assert registry.claim("m", LEAST_LOADED) is None
    assert registry.models() == ["other"]


def test_heartbeat_keeps_the_queens_in_flight_count() -> None:
    registry = Registry()
    registry.beat(_beat("a"))
    record = registry.claim("m", LEAST_LOADED)
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
        record = registry.claim("m", LEAST_LOADED)
        assert record is not None
        record.in_flight -= 1  # given back at once
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


def test_a_full_worker_is_never_claimed() -> None:
    registry = Registry()
    registry.beat(_beat("a"))  # 2 slots
    assert registry.claim("m", LEAST_LOADED) is not None
    assert registry.claim("m", LEAST_LOADED) is not None
    assert registry.claim("m", LEAST_LOADED) is None
    assert registry.serves("m")  # full, but it serves the model: a request may wait


def test_an_unhealthy_worker_is_passed_over_until_its_time_is_up() -> None:
    clock = Clock()
    registry = Registry(clock=clock)
    record = registry.beat(_beat("a"))
    assert record is not None
    registry.mark_unhealthy(record, "reset", for_s=10.0)
    registry.beat(_beat("a"))  # a heartbeat does not lift the mark
    assert registry.claim("m", LEAST_LOADED) is None
    assert not registry.serves("m")
    view = registry.view(record)
    assert (view.healthy, view.unhealthy_reason) == (False, "reset")
    clock.now += 10.1
    registry.beat(_beat("a"))
    assert registry.claim("m", LEAST_LOADED) is record


def test_round_robin_ignores_load() -> None:
    clock = Clock()
    registry = Registry(clock=clock)
    registry.beat(_beat("a"))
    registry.beat(_beat("b"))
    policy = policy_for(Serving(routing="round_robin"))
    first = registry.claim("m", policy)
    clock.now += 0.01
    second = registry.claim("m", policy)
    clock.now += 0.01
    third = registry.claim("m", policy)
    assert first is not None and second is not None and third is not None
    assert first is not second and third is first  # least loaded would have taken `second`


def test_prefer_hive_fills_that_hive_first() -> None:
    registry = Registry()
    registry.beat(_beat("cpu", hive="small"))
    registry.beat(_beat("gpu", hive="big"))
    policy = policy_for(Serving(routing="prefer_hive", prefer_hive="big"))
    picked = [registry.claim("m", policy) for _ in range(3)]
    assert [r.beat.worker_id if r else None for r in picked] == ["gpu", "gpu", "cpu"]


def test_a_worker_whose_beats_stop_is_silenced_until_it_beats_again_or_is_retired() -> None:
    clock = Clock()
    registry = Registry(clock=clock)
    registry.beat(_beat("a"))
    registry.beat(_beat("b"))
    clock.now += 7  # three beats missed
    registry.beat(_beat("b"))
    assert registry.silenced() == {"a": 1}
    registry.beat(_beat("a"))  # it was only slow: no longer silent
    assert registry.silenced() == {}
    clock.now += 7
    assert registry.silenced() == {"a": 1, "b": 1}
    registry.retire("b")  # being replaced: the planner need not replace it again
    assert registry.silenced() == {"a": 1}


def test_a_worker_whose_heartbeats_stop_is_announced_once() -> None:
    clock = Clock()
    lost: list[str] = []
    registry = Registry(clock=clock, on_lost=lambda record: lost.append(record.beat.worker_id))
    registry.beat(_beat("a"))
    registry.announce_lost()
    assert lost == []
    clock.now += 7.0  # past three missed beats
    registry.announce_lost()
    registry.announce_lost()
    assert lost == ["a"]
