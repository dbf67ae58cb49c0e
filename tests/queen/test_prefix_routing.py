"""`routing: prefix` on the real registry and admission: a conversation's next turn goes to the
worker whose heartbeat reports its prefix (or that was sent its last turn, before any beat says
so), away from it when that worker is saturated, and a freed slot goes to the waiter whose
history that worker holds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rbee.config.models import Serving
from rbee.queen.serve.admission import PREFIX_WINDOW, Admission
from rbee.queen.serve.registry import Registry
from rbee.queen.serve.scheduler import policy_for
from rbee.queen.serve.worker import ROUTED_KEPT_S
from rbee.wire import Heartbeat
from rbee.wire.prefix import EMPTY, prefix_of

PREFIX = Serving(routing="prefix")
POLICY = policy_for(PREFIX)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _beat(wid: str, busy: int = 0, prefixes: tuple[int, ...] = (), slots: int = 2) -> Heartbeat:
    return Heartbeat(
        worker_id=wid,
        hive="local",
        model="m",
        worker_binary="cpu",
        url=f"http://127.0.0.1/{wid}",
        pid=1,
        device="cpu",
        state="busy" if busy else "idle",
        slots_total=slots,
        slots_busy=busy,
        prefixes=list(prefixes),
    )


def _chat(system: str, *turns: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}]
    for number, turn in enumerate(turns):
        if number:
            messages.append({"role": "assistant", "content": f"answer {number}"})
        messages.append({"role": "user", "content": turn})
    return {"model": "m", "messages": messages}


SYSTEM = "You are a patient librarian who knows every book about bees. " * 8


def test_the_next_turn_goes_to_the_worker_that_reports_its_prefix() -> None:
    registry = Registry()
    first_turn = prefix_of(_chat(SYSTEM, "Which books?"))
    for wid in ("a", "b", "c"):
        registry.beat(_beat(wid, prefixes=first_turn.hashes if wid == "b" else ()))
    next_turn = prefix_of(_chat(SYSTEM, "Which books?", "And the oldest?"))
    picked = registry.claim("m", POLICY, prefix=next_turn)
    assert picked is not None and picked.beat.worker_id == "b"
    # A request nobody holds goes to the least loaded (not b, which is now busier).
    other = registry.claim("m", POLICY, prefix=prefix_of(_chat("Another system.", "Hi")))
    assert other is not None and other.beat.worker_id != "b"


def test_a_turn_sent_is_held_there_until_a_heartbeat_after_it_says_otherwise() -> None:
    clock = Clock()
    registry = Registry(clock=clock)
    registry.beat(_beat("a"))
    registry.beat(_beat("b"))
    turn1 = prefix_of(_chat(SYSTEM, "Which books?"))
    first = registry.claim("m", POLICY, prefix=turn1)
    assert first is not None
    registry.release(first)
    registry.beat(_beat(first.beat.worker_id))  # a beat sent before the turn was read
    turn2 = prefix_of(_chat(SYSTEM, "Which books?", "And the oldest?"))
    again = registry.claim("m", POLICY, prefix=turn2)
    assert again is first
    registry.release(again)
    clock.now += ROUTED_KEPT_S + 1
    registry.beat(_beat("a"))
    registry.beat(_beat("b"))  # neither holds it any more (evicted, say)
    assert first.prefixes == set()


def test_a_saturated_worker_is_passed_over_whatever_it_holds() -> None:
    registry = Registry()
    turn = prefix_of(_chat(SYSTEM, "Which books?", "And the oldest?"))
    held = prefix_of(_chat(SYSTEM, "Which books?")).hashes
    registry.beat(_beat("hot", busy=2, prefixes=held))
    registry.beat(_beat("cold"))
    picked = registry.claim("m", POLICY, prefix=turn)
    assert picked is not None and picked.beat.worker_id == "cold"
    # Holding a small share of the prompt (the head every chat shares) does not outweigh half
    # its slots in use.
    registry = Registry()
    registry.beat(_beat("warm", busy=1, prefixes=prefix_of(_chat(SYSTEM, "x")).hashes[:1]))
    registry.beat(_beat("idle"))
    picked = registry.claim("m", POLICY, prefix=turn)
    assert picked is not None and picked.beat.worker_id == "idle"


def test_without_a_prefix_the_policy_is_least_loaded() -> None:
    registry = Registry()
    registry.beat(_beat("a", busy=1))
    registry.beat(_beat("b"))
    picked = registry.claim("m", POLICY, prefix=EMPTY)
    assert picked is not None and picked.beat.worker_id == "b"


def test_a_freed_slot_goes_to_the_waiter_whose_history_that_worker_holds() -> None:
    async def scenario() -> None:
        registry = Registry()
        admission = Admission(registry, lambda model: PREFIX)
        mine = prefix_of(_chat(SYSTEM, "Which books?"))
        registry.beat(_beat("a", prefixes=mine.hashes, slots=1))
        registry.beat(_beat("b", slots=1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        holders = [await admission.acquire("m", PREFIX, deadline) for _ in range(2)]
        strangers = [
            asyncio.ensure_future(
                admission.acquire("m", PREFIX, deadline, prefix=prefix_of(_chat(f"S{n}", "hi")))
            )
            for n in range(3)
        ]
        returning = asyncio.ensure_future(
            admission.acquire(
                "m", PREFIX, deadline, prefix=prefix_of(_chat(SYSTEM, "Which books?", "More?"))
            )
        )
        await asyncio.sleep(0)
        a = next(rec for rec in holders if rec.beat.worker_id == "a")
        admission.release(a)
        await asyncio.sleep(0)
        assert returning.done() and returning.result() is a  # ahead of three earlier waiters
        assert not any(waiter.done() for waiter in strangers)
        for waiter in strangers:
            waiter.cancel()

    asyncio.run(scenario())


def test_a_waiter_passed_over_often_enough_is_served_first() -> None:
    async def scenario() -> None:
        registry = Registry()
        admission = Admission(registry, lambda model: PREFIX)
        held = prefix_of(_chat(SYSTEM, "Which books?"))
        registry.beat(_beat("a", prefixes=held.hashes, slots=1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        slot = await admission.acquire("m", PREFIX, deadline)
        first = asyncio.ensure_future(admission.acquire("m", PREFIX, deadline))
        await asyncio.sleep(0)
        for turn in range(PREFIX_WINDOW):
            later = asyncio.ensure_future(
                admission.acquire(
                    "m",
                    PREFIX,
                    deadline,
                    prefix=prefix_of(_chat(SYSTEM, "Which books?", str(turn))),
                )
            )
            await asyncio.sleep(0)
            admission.release(slot)
            await asyncio.sleep(0)
            assert later.done() and not first.done()  # the returning conversation goes first
            slot = later.result()
        admission.release(slot)
        await asyncio.sleep(0)
        assert first.done()

    asyncio.run(scenario())
