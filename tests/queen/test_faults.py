"""The relay under faults: timeouts, retries before the first byte, error events after it.

A real queen process; scripted workers (tests/fixtures/scripted.py) force each failure.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.scripted import MODEL, TOKENS, ScriptedQueen, ScriptedWorkers, scripted_workers

FAST = {
    "connect_timeout": 0.5,
    "first_byte_timeout": 0.5,
    "idle_timeout": 0.5,
    "attempts": 3,
    "queue_timeout": 5,
}


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedWorkers]:
    yield from scripted_workers()


@pytest.fixture
def queen(tmp_path: Path) -> Iterator[ScriptedQueen]:
    queen = ScriptedQueen.start(tmp_path, FAST)
    yield queen
    queen.stop()


def _chat(queen: ScriptedQueen, stream: bool) -> httpx.Response:
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        f"{queen.url}/v1/chat/completions", json=body, headers=queen.headers, timeout=30
    )


def _events(response: httpx.Response) -> list[Any]:
    """The stream's events: parsed JSON objects, and "[DONE]"."""
    assert response.text.endswith("\n\n"), "the stream did not end on an event boundary"
    events = []
    for block in response.text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _text(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content", "")
        for e in events
        if isinstance(e, dict) and "choices" in e
    )


def _counter(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels` (0 when there is none)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_slow_first_byte_times_out_and_another_worker_answers(
    queen: ScriptedQueen, scripted: ScriptedWorkers, stream: bool
) -> None:
    queen.add_worker("a-slow", scripted.worker("slow:3"))
    queen.add_worker("b-ok", scripted.worker("ok"))
    response = _chat(queen, stream)
    assert response.status_code == 200
    assert response.headers["x-rbee-worker"] == "b-ok"
    if stream:
        assert _text(_events(response)) == "".join(TOKENS)  # once, from b only
    listed = queen.listed()
    assert listed["a-slow"]["healthy"] is False
    assert "first byte" in listed["a-slow"]["unhealthy_reason"]
    metrics = queen.metrics()
    assert _counter(metrics, "rbee_queen_timeouts_total", model=MODEL, kind="first_byte") == 1
    assert _counter(metrics, "rbee_queen_retries_total", model=MODEL) == 1


def test_an_unhealthy_worker_is_passed_over_by_the_next_request(
    queen: ScriptedQueen, scripted: ScriptedWorkers
) -> None:
    queen.add_worker("a-slow", scripted.worker("slow:3"))
    queen.add_worker("b-ok", scripted.worker("ok"))
    _chat(queen, False)
    for _ in range(3):
        assert _chat(queen, False).headers["x-rbee-worker"] == "b-ok"
    metrics = queen.metrics()
    assert _counter(metrics, "rbee_queen_retries_total", model=MODEL) == 1


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose connects hang: a listener that never accepts, its backlog full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


def test_a_connect_that_hangs_times_out_and_another_worker_answers(
    queen: ScriptedQueen, scripted: ScriptedWorkers, unanswered_port: int
) -> None:
    queen.add_worker("a-unanswered", f"https://127.0.0.1:{unanswered_port}")
    queen.add_worker("b-ok", scripted.worker("ok"))
    started = time.monotonic()
    response = _chat(queen, False)
    assert response.status_code == 200
    assert response.headers["x-rbee-worker"] == "b-ok"
    assert 0.5 <= time.monotonic() - started < 3  # connect_timeout is 0.5 s
    assert queen.listed()["a-unanswered"]["healthy"] is False
    assert _counter(queen.metrics(), "rbee_queen_timeouts_total", kind="connect") == 1


def test_a_worker_whose_heartbeats_stop_loses_its_requests_to_another(
    tmp_path: Path, scripted: ScriptedWorkers
) -> None:
    # Long timeouts: what ends the wait is the missed heartbeats (a SIGSTOPped worker, say).
    queen = ScriptedQueen.start(tmp_path, {**FAST, "first_byte_timeout": 60, "idle_timeout": 60})
    try:
        queen.add_worker("a-stopped", scripted.worker("slow:30"))
        queen.add_worker("b-ok", scripted.worker("ok"))
        del queen.workers["a-stopped"]  # no more heartbeats from it
        started = time.monotonic()
        response = _chat(queen, True)
        assert response.status_code == 200
        assert response.headers["x-rbee-worker"] == "b-ok"
        assert _text(_events(response)) == "".join(TOKENS)
        assert 5 < time.monotonic() - started < 10  # 3 missed beats of 2 s, then at once
    finally:
        queen.stop()


def test_a_kept_alive_connection_the_worker_closed_is_not_a_failure(
    queen: ScriptedQueen, scripted: ScriptedWorkers
) -> None:
    queen.add_worker("only", scripted.worker("ok"))
    assert _chat(queen, False).status_code == 200
    time.sleep(1.5)  # the worker closes the idle connection after 1 s
    again = _chat(queen, True)
    assert again.status_code == 200 and _text(_events(again)) == "".join(TOKENS)
    assert queen.listed()["only"]["healthy"] is True
    assert _counter(queen.metrics(), "rbee_queen_retries_total", model=MODEL) == 0


def test_a_crash_before_the_first_byte_retries_elsewhere(
    queen: ScriptedQueen, scripted: ScriptedWorkers
) -> None:
    queen.add_worker("a-crash", scripted.worker("crash-before"))
    queen.add_worker("b-ok", scripted.worker("ok"))
    response = _chat(queen, True)
    assert response.status_code == 200
    assert _text(_events(response)) == "".join(TOKENS)
    assert "a-crash" not in queen.listed()  # dropped until it beats again


def test_5xx_is_retried_until_attempts_run_out_then_502(
    queen: ScriptedQueen, scripted: ScriptedWorkers
) -> None:
    for name in ("a", "b", "c", "d"):
        queen.add_worker(name, scripted.worker("fail:500"))
    response = _chat(queen, True)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "worker_failed"
    assert response.json()["error"]["type"] == "bad_gateway"
    served = scripted.served.get("fail:500", 0)
    assert served >= 3
    # Three attempts, not four: one worker stayed untried.
    assert sum(1 for w in queen.listed().values() if w["healthy"]) == 1
    assert _counter(queen.metrics(), "rbee_queen_retries_total", model=MODEL) == 2


def test_a_hang_after_the_first_byte_ends_the_stream_with_one_error_event(
    queen: ScriptedQueen, scripted: ScriptedWorkers
) -> None:
    queen.add_worker("a-hang", scripted.worker("hang:2"))
    queen.add_worker("b-ok", scripted.worker("ok"))
    response = _chat(queen, True)
    assert response.status_code == 200
    events = _events(response)
    assert _text(events) == "".join(TOKENS[:2])  # what a sent, once; no retry after a byte
    assert "[DONE]" not in events
    error = events[-1]["error"]
    assert (error["type"], error["code"]) == ("bad_gateway", "worker_failed")
    assert "no data for 0.5 s" in error["message"]
    assert sum(1 for e in events if "error" in e) == 1
    assert queen.listed()["a-hang"]["healthy"] is False
    assert _counter(queen.metrics(), "rbee_queen_timeouts_total", model=MODEL, kind="idle") == 1


@pytest.mark.parametrize("behaviour", ["crash-after", "crash-after-split"])
def test_a_crash_after_the_first_byte_drops_the_half_event(
    queen: ScriptedQueen, scripted: ScriptedWorkers, behaviour: str
) -> None:
    queen.add_worker("a-crash", scripted.worker(behaviour))
    response = _chat(queen, True)
    events = _events(response)  # every block whole: the half event was not passed on
    assert _text(events) == TOKENS[0]
    assert events[-1]["error"]["code"] == "worker_failed"
    assert "a-crash" not in queen.listed()


def test_a_non_streamed_answer_cut_after_its_first_byte_is_a_502(
    queen: ScriptedQueen, scripted: ScriptedWorkers
) -> None:
    queen.add_worker("a-partial", scripted.worker("partial"))
    queen.add_worker("b-ok", scripted.worker("ok"))
    response = _chat(queen, False)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "worker_failed"
    assert response.headers["x-request-id"]


def test_the_openai_client_sees_our_errors(queen: ScriptedQueen, scripted: ScriptedWorkers) -> None:
    queen.add_worker("a-hang", scripted.worker("hang:2"))
    client = openai.OpenAI(base_url=f"{queen.url}/v1", api_key=queen.token, max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as caught:
        for part in stream:
            text += part.choices[0].delta.content or ""
    assert text == "".join(TOKENS[:2])
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "worker_failed"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=messages)
    assert missing.value.code == "model_not_found"
    queen.workers.clear()
    queen.add_worker("b-ok", scripted.worker("ok"))
    answer = client.chat.completions.create(model=MODEL, messages=messages)
    assert answer.choices[0].message.content == "".join(TOKENS)
    streamed = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    assert "".join(p.choices[0].delta.content or "" for p in streamed if p.choices) == "".join(
        TOKENS
    )
