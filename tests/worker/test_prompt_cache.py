"""The RAM prompt cache on the real model: a conversation whose slot another one took comes back
restored from host memory (counted, and the same greedy text as a cold read), and the cache
stays within its byte budget. The bookkeeping alone (`RamCache`) is checked without a model.
"""

from __future__ import annotations

import ctypes
from typing import Any

import httpx
import pytest

from rbee.wire.prefix import EMPTY, prefix_of
from rbee.worker.prompt_cache import Entry, RamCache
from tests.worker.conftest import HEADERS, Worker, WorkerFactory

#: Counting: a continuation far from any tie, so a restored read and a cold one agree exactly.
COUNTING = ", ".join(str(n) for n in range(1, 41)) + ","
LETTERS = " ".join(f"{a}{b}" for a in "ABCDEFGH" for b in "xyz") + " and then"


def _complete(worker: Worker, prompt: str, max_tokens: int = 12) -> dict[str, Any]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    response = httpx.post(f"{worker.url}/v1/completions", json=body, headers=HEADERS, timeout=120)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _cache(worker: Worker) -> dict[str, int]:
    counters: dict[str, int] = worker.health()["prompt_cache"]
    return counters


@pytest.mark.slow
def test_a_conversation_comes_back_from_ram_as_read_cold_and_the_budget_holds(
    start_worker: WorkerFactory,
) -> None:
    cached = start_worker("--threads", "2", slots=1)
    small = start_worker("--threads", "2", "--prompt-cache", "4MiB", slots=1)
    cached.wait_ready()
    small.wait_ready()
    first = _complete(cached, COUNTING)
    returning = COUNTING + first["choices"][0]["text"] + " and on:"
    _complete(cached, LETTERS)  # another conversation takes the one slot
    after_other = _cache(cached)
    assert after_other["saved"] == 1 and after_other["entries"] == 1
    assert prefix_of({"prompt": COUNTING}).hashes[0] in cached.health()["prefixes"]

    warm = _complete(cached, returning)
    counters = _cache(cached)
    assert counters["ram_hits"] == 1
    reused = warm["usage"]["prompt_tokens_details"]["cached_tokens"]
    # The first turn's prompt (~80 tokens) came back from RAM, not read again.
    assert reused >= first["usage"]["prompt_tokens"] - 2
    assert counters["reused_tokens"] - after_other["reused_tokens"] == reused
    read_cold = _complete(small, returning)  # the small worker's first request: all read
    assert read_cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert warm["choices"][0]["text"] == read_cold["choices"][0]["text"]

    # Six more conversations through the small worker's one slot: each saves the one before.
    for n in range(6):
        _complete(small, f"Conversation {n}: " + COUNTING, max_tokens=2)
    counters = _cache(small)
    assert counters["saved"] == 6
    assert counters["budget"] == 4 << 20
    assert 0 < counters["bytes"] <= 4 << 20
    assert counters["evictions"] >= 1
    assert counters["entries"] == 6 - counters["evictions"]


def _entry(tokens: list[int], size: int) -> Entry:
    return Entry(tokens, (ctypes.c_uint8 * size)())


def test_ram_cache_bookkeeping_drops_least_recently_used_and_superseded_entries() -> None:
    cache = RamCache(budget=300)
    a, b = _entry([1, 2, 3], 100), _entry([4, 5, 6], 100)
    cache.put(a)
    cache.put(b)
    assert cache.best([1, 2, 3, 9]) == (a, 3)
    assert cache.best([7]) == (None, 0)
    cache.used(a)  # b is now the least recently used
    c = _entry([7, 8], 150)
    cache.put(c)
    assert cache.newest_first() == [c, a] and cache.evictions == 1 and cache.bytes == 250
    # The next turn of a conversation replaces the entry it extends.
    longer = _entry([1, 2, 3, 4], 120)
    cache.put(longer)
    assert cache.newest_first() == [longer, c] and cache.bytes == 270
    assert cache.covers([1, 2]) and not cache.covers([1, 9])
    assert not cache.put(_entry([9], 301))  # alone over the budget: not kept
    assert len(cache) == 2


def test_a_request_names_the_same_prefix_blocks_wherever_it_is_hashed() -> None:
    system = {"role": "system", "content": "You are terse."}
    turn1 = {"model": "m", "messages": [system, {"role": "user", "content": "Hi"}]}
    turn2 = {
        "model": "m",
        "stream": True,
        "messages": [
            system,
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
    }
    one, two = prefix_of(turn1), prefix_of(turn2)
    assert two.hashes[: len(one.hashes)] == one.hashes  # sampling fields play no part
    assert two.held(set(one.hashes)) == one.size > 0
    assert two.held({12345}) == 0
    assert two.held({one.hashes[0]}) == 0  # the head alone: every chat shares it
    tools = prefix_of({**turn1, "tools": [{"type": "function"}]})
    assert tools.hashes[0] != one.hashes[0]  # tools are written before the messages
    prompt = "x" * 600
    assert len(prefix_of({"prompt": prompt}).hashes) == 1 + 3
    assert prefix_of({"prompt": prompt + "y"}).held(set(prefix_of({"prompt": prompt}).hashes[:3]))
    assert prefix_of({"prompt": [1, 2]}).hashes == ()
    assert prefix_of({"messages": []}) == EMPTY
