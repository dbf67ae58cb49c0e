"""The executor in-process against a scripted Effects: order, parallelism, failures, retries."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from rbee.apply.executor import Emit, Outcome, RetryPolicy, execute, is_transient
from rbee.errors import NotFoundError, RbeeError, RemoteError, UnavailableError
from rbee.wire import ApplyEvent, SpawnedEvent
from rbee.wire.plan import Action, Plan

FAST = RetryPolicy(retries=3, first_delay_s=0.01, factor=2.0, jitter_s=0.0)


def _action(address: str, *depends_on: str) -> Action:
    return Action(
        address=address,
        kind="worker",
        op="create",
        hive="local",
        reason="test",
        depends_on=list(depends_on),
    )


def _plan(*actions: Action) -> Plan:
    return Plan(actions=list(actions))


@dataclass
class Scripted:
    """Effects that sleep a little per action and fail as scripted, counting what overlaps."""

    delay_s: float = 0.01
    # address → errors to raise on successive attempts (then succeed)
    failures: dict[str, list[Exception]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    running: int = 0
    most_running: int = 0

    async def run(self, action: Action, emit: Emit) -> None:
        self.calls.append(action.address)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay_s)
            errors = self.failures.get(action.address)
            if errors:
                raise errors.pop(0)
            self.finished.append(action.address)
        finally:
            self.running -= 1


def _run(
    plan: Plan, effects: Scripted, parallelism: int = 10, retry: RetryPolicy = FAST
) -> tuple[Outcome, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    async def emit(event: ApplyEvent) -> None:
        events.append(event.model_dump())

    outcome = asyncio.run(execute(plan, effects, emit, parallelism, retry))
    return outcome, events


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def test_actions_run_after_their_dependencies() -> None:
    plan = _plan(
        _action("worker.a[0]", "model.a", "hive.a"),
        _action("model.a", "hive.a"),
        _action("hive.a"),
    )
    effects = Scripted()
    outcome, _ = _run(plan, effects)
    assert effects.finished == ["hive.a", "model.a", "worker.a[0]"]
    assert outcome.ok and sorted(outcome.done) == sorted(effects.finished)


def test_dependencies_outside_the_plan_do_not_block() -> None:
    effects = Scripted()
    outcome, _ = _run(_plan(_action("worker.a[0]", "hive.a")), effects)
    assert outcome.done == ["worker.a[0]"]


@pytest.mark.parametrize("parallelism", [1, 3])
def test_never_more_than_parallelism_actions_at_once(parallelism: int) -> None:
    effects = Scripted(delay_s=0.02)
    outcome, _ = _run(_plan(*(_action(f"worker.a[{i}]") for i in range(8))), effects, parallelism)
    assert outcome.ok
    assert effects.most_running == parallelism


def test_independent_actions_run_concurrently() -> None:
    effects = Scripted(delay_s=0.05)
    _run(_plan(*(_action(f"worker.a[{i}]") for i in range(5))), effects, parallelism=10)
    assert effects.most_running == 5


def test_a_failure_skips_its_dependents_but_not_independent_branches() -> None:
    plan = _plan(
        _action("hive.a"),
        _action("model.a", "hive.a"),
        _action("worker.a[0]", "model.a"),
        _action("hive.b"),
        _action("model.b", "hive.b"),
        _action("worker.b[0]", "model.b"),
    )
    effects = Scripted(failures={"model.a": [RbeeError("sha256 mismatch")]})
    outcome, events = _run(plan, effects)
    assert outcome.failed == {"model.a": "sha256 mismatch"}
    assert outcome.skipped == ["worker.a[0]"]
    assert sorted(outcome.done) == ["hive.a", "hive.b", "model.b", "worker.b[0]"]
    assert not outcome.ok
    assert "worker.a[0]" not in effects.calls
    [skipped] = _of(events, "skipped")
    assert skipped == {"event": "skipped", "address": "worker.a[0]", "because": ["model.a"]}


def test_skips_cascade_down_the_graph() -> None:
    plan = _plan(
        _action("hive.a"),
        _action("model.a", "hive.a"),
        _action("worker.a[0]", "model.a"),
    )
    outcome, _ = _run(plan, Scripted(failures={"hive.a": [RbeeError("no such host")]}))
    assert outcome.skipped == ["model.a", "worker.a[0]"]


def test_a_transient_error_is_retried_with_growing_delays_then_succeeds() -> None:
    errors: list[Exception] = [
        UnavailableError("hive at http://h:7835 is unreachable: ConnectError"),
        RemoteError("spawn worker: HTTP 503: busy", status=503),
    ]
    effects = Scripted(failures={"worker.a[0]": errors})
    outcome, events = _run(_plan(_action("worker.a[0]")), effects)
    assert outcome.ok and outcome.done == ["worker.a[0]"]
    assert effects.calls == ["worker.a[0]"] * 3
    assert _of(events, "retry") == [
        {
            "event": "retry",
            "address": "worker.a[0]",
            "attempt": 1,
            "error": "hive at http://h:7835 is unreachable: ConnectError",
            "delay_s": 0.01,
        },
        {
            "event": "retry",
            "address": "worker.a[0]",
            "attempt": 2,
            "error": "spawn worker: HTTP 503: busy",
            "delay_s": 0.02,
        },
    ]
    # One start and one done, however many attempts it took.
    assert [e["event"] for e in events] == ["start", "retry", "retry", "done"]


def test_a_transient_error_that_persists_fails_after_the_last_retry() -> None:
    errors: list[Exception] = [UnavailableError("hive unreachable") for _ in range(10)]
    effects = Scripted(failures={"model.a": errors})
    plan = _plan(_action("model.a"), _action("worker.a[0]", "model.a"))
    outcome, events = _run(plan, effects)
    assert effects.calls == ["model.a"] * 4  # the first try and 3 retries
    assert [e["attempt"] for e in _of(events, "retry")] == [1, 2, 3]
    assert outcome.failed == {"model.a": "hive unreachable (gave up after 4 attempts)"}
    assert outcome.skipped == ["worker.a[0]"]


@pytest.mark.parametrize(
    "error",
    [
        RbeeError("worker did not report idle within 180 s"),
        NotFoundError("model x: no such model"),
        RemoteError("add model: HTTP 422: bad sha256", status=422),
        ValueError("a bug"),
    ],
    ids=["rbee-error", "not-found", "http-4xx", "bug"],
)
def test_a_non_transient_error_fails_at_once(error: Exception) -> None:
    effects = Scripted(failures={"model.a": [error]})
    outcome, events = _run(_plan(_action("model.a")), effects)
    assert effects.calls == ["model.a"]
    assert _of(events, "retry") == []
    assert list(outcome.failed) == ["model.a"]
    assert "gave up" not in outcome.failed["model.a"]


def test_no_retries_when_the_policy_allows_none() -> None:
    effects = Scripted(failures={"model.a": [UnavailableError("down")]})
    outcome, _ = _run(_plan(_action("model.a")), effects, retry=RetryPolicy(retries=0))
    assert effects.calls == ["model.a"]
    assert outcome.failed == {"model.a": "down"}


def _retry_delays(policy: RetryPolicy) -> list[float]:
    effects = Scripted(failures={"model.a": [UnavailableError("down") for _ in range(10)]})
    _, events = _run(_plan(_action("model.a")), effects, retry=policy)
    return [event["delay_s"] for event in _of(events, "retry")]


def test_retry_delays_grow_exponentially_up_to_a_cap() -> None:
    policy = RetryPolicy(retries=4, first_delay_s=0.01, factor=2.0, max_delay_s=0.03, jitter_s=0)
    assert _retry_delays(policy) == [0.01, 0.02, 0.03, 0.03]


def test_retry_delays_are_jittered_so_failed_actions_do_not_retry_in_lockstep() -> None:
    policy = RetryPolicy(retries=3, first_delay_s=0.01, factor=2.0, jitter_s=0.05)
    delays = _retry_delays(policy)
    bases = [0.01, 0.02, 0.04]
    assert all(base <= delay <= base + 0.05 for base, delay in zip(bases, delays, strict=True))
    assert delays != bases


def test_a_waiting_retry_does_not_hold_a_parallelism_slot() -> None:
    effects = Scripted(failures={"model.a": [UnavailableError("down")]})
    plan = _plan(_action("model.a"), _action("model.b"))
    outcome, _ = _run(plan, effects, parallelism=1, retry=RetryPolicy(retries=1, first_delay_s=0.3))
    assert outcome.ok
    # model.b ran while model.a waited to be retried, not after it.
    assert effects.finished == ["model.b", "model.a"]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (UnavailableError("unreachable"), True),
        (RemoteError("HTTP 500", status=500), True),
        (RemoteError("HTTP 502", status=502), True),
        (RemoteError("HTTP 404", status=404), False),
        (RemoteError("no status"), False),
        (RbeeError("plain"), False),
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("slow"), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (ValueError("bug"), False),
    ],
)
def test_which_errors_count_as_transient(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_an_action_that_already_spawned_a_process_is_not_retried() -> None:
    class SpawnsThenLosesTheHive(Scripted):
        async def run(self, action: Action, emit: Emit) -> None:
            self.calls.append(action.address)
            await emit(SpawnedEvent(address=action.address, pid=4242))
            raise UnavailableError("hive unreachable while the worker starts")

    effects = SpawnsThenLosesTheHive()
    outcome, events = _run(_plan(_action("worker.a[0]")), effects)
    assert effects.calls == ["worker.a[0]"]  # a retry would spawn a second worker
    assert _of(events, "retry") == []
    assert list(outcome.failed) == ["worker.a[0]"]
