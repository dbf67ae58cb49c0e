"""The one claim → call → retry → release loop (`rbee.queen.serve.calls`), whoever calls it."""

from __future__ import annotations

import asyncio

import pytest

from rbee.config.models import Serving
from rbee.queen.serve.admission import Admission, NoWorker
from rbee.queen.serve.calls import AttemptFailed, Calls, Exhausted
from rbee.queen.serve.metrics import Metrics
from rbee.queen.serve.registry import Registry
from rbee.queen.serve.worker import WorkerRecord
from rbee.wire import Heartbeat

MODEL = "m"


def _beat(worker_id: str) -> Heartbeat:
    return Heartbeat(
        worker_id=worker_id,
        hive="local",
        model=MODEL,
        worker_binary="cpu",
        url="http://127.0.0.1:9",
        pid=1,
        device="cpu",
        state="idle",
        slots_total=1,
        slots_busy=0,
    )


def test_each_retry_goes_to_another_worker_is_counted_and_gives_the_slot_back() -> None:
    async def scenario() -> tuple[list[str], float, dict[str, int]]:
        registry = Registry()
        for worker_id in ("a", "b"):
            registry.beat(_beat(worker_id))
        admission = Admission(registry)
        metrics = Metrics(registry, admission.depths, lambda: (0, 0))
        calls = Calls(registry, admission, metrics)
        serving = Serving(attempts=3)
        loop = asyncio.get_running_loop()
        called: list[str] = []

        async def claim(tried: frozenset[str], last: AttemptFailed | None) -> WorkerRecord | None:
            try:
                return await admission.acquire(MODEL, serving, loop.time() + 1, tried)
            except NoWorker:
                return None

        async def call(record: WorkerRecord) -> None:
            called.append(record.beat.worker_id)
            raise AttemptFailed("the worker answered 500")

        with pytest.raises(Exhausted) as exhausted:
            await calls.attempt(MODEL, serving, "req-1", claim, call)
        assert exhausted.value.last.reason == "the worker answered 500"
        retries = metrics.model(MODEL).retries._value.get()
        in_flight = {r.beat.worker_id: r.in_flight for r in registry.live()}
        return called, retries, in_flight

    called, retries, in_flight = asyncio.run(scenario())
    assert sorted(called) == ["a", "b"]
    assert retries == 2  # before the second attempt, and before the third (which found none)
    assert in_flight == {"a": 0, "b": 0}
