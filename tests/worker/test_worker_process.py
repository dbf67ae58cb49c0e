"""The real worker process with the real model: heartbeats, streaming, slots, drain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from rbee.wire import Heartbeat, PromptCacheStats
from tests.fixtures.model import demo_model_path
from tests.worker.conftest import HEADERS, TOKEN, FakeQueen, Worker, WorkerFactory, wait_until

pytestmark = pytest.mark.slow

HELLO = [{"role": "user", "content": "Write one sentence about bees."}]


def _stream(url: str, path: str, body: dict[str, Any]) -> list[tuple[float, str]]:
    """Every SSE `data:` payload of a streamed request, with the time it arrived."""
    events: list[tuple[float, str]] = []
    with httpx.stream(
        "POST", url + path, json={**body, "stream": True}, headers=HEADERS, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line:
                assert line.startswith("data: "), line
                events.append((time.monotonic(), line[len("data: ") :]))
    return events


def _texts(events: list[tuple[float, str]]) -> list[tuple[float, str]]:
    texts = []
    for at, data in events:
        if data != "[DONE]":
            delta = json.loads(data)["choices"][0]["delta"]
            if delta.get("content"):
                texts.append((at, delta["content"]))
    return texts


def test_heartbeats_say_loading_then_idle_with_every_field(
    queen: FakeQueen, two_slots: Worker
) -> None:
    wait_until(lambda: "idle" in queen.states(two_slots.worker_id), 5, "an idle heartbeat")
    states = queen.states(two_slots.worker_id)
    assert states[0] == "loading"
    beats = queen.of(two_slots.worker_id)
    idle = beats[states.index("idle")]
    assert set(idle.body) == set(Heartbeat.model_fields)
    assert Heartbeat.model_validate(idle.body) == Heartbeat(
        worker_id=two_slots.worker_id,
        hive="test-hive",
        model="gemma3-270m",
        worker_binary="cpu",
        url=two_slots.url,
        pid=two_slots.proc.pid,
        device="cpu",
        state="idle",
        slots_total=2,
        slots_busy=0,
        threads=idle.body["threads"],  # a share of the cores, with the other tests' workers
        prompt_cache=PromptCacheStats(budget=1 << 30),
    )
    assert 1 <= idle.body["threads"] <= len(os.sched_getaffinity(0))
    assert idle.authorization == f"Bearer {TOKEN}"


def test_a_worker_with_a_token_refuses_callers_without_it_on_loopback_too(
    two_slots: Worker,
) -> None:
    # Loopback is no exception: anyone on the machine could go around the queen's keys.
    body = {"messages": HELLO, "max_tokens": 2, "input": "hi"}
    routes = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank")
    for path in (*routes, "/v1/responses"):
        for headers in ({}, {"authorization": "Bearer wrong"}):
            refused = httpx.post(f"{two_slots.url}{path}", json=body, headers=headers, timeout=5)
            assert refused.status_code == 401, path
        page = {**HEADERS, "content-type": "text/plain", "origin": "http://evil.example"}
        cross = httpx.post(f"{two_slots.url}{path}", content=b"{}", headers=page, timeout=5)
        assert cross.status_code == 403, path
    assert httpx.get(f"{two_slots.url}/health", timeout=5).status_code == 200


def test_a_streamed_chat_arrives_token_by_token_and_ends_with_done(two_slots: Worker) -> None:
    events = _stream(
        two_slots.url,
        "/v1/chat/completions",
        {"model": "another-name", "messages": HELLO, "max_tokens": 12, "seed": 1},
    )
    assert events[-1][1] == "[DONE]"
    first = json.loads(events[0][1])
    assert first["object"] == "chat.completion.chunk"
    assert first["model"] == "gemma3-270m"
    texts = _texts(events)
    assert len(texts) >= 5
    assert "".join(text for _, text in texts).strip()
    # Streamed as generated, not buffered: ~30 ms per token separates the first from the last.
    assert texts[-1][0] - texts[0][0] > 0.05


def test_a_chat_without_stream_returns_the_whole_answer(two_slots: Worker) -> None:
    response = httpx.post(
        f"{two_slots.url}/v1/chat/completions",
        headers=HEADERS,
        json={"messages": HELLO, "max_tokens": 12, "temperature": 0.7, "top_p": 0.9},
        timeout=60,
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"].strip()
    assert 0 < answer["usage"]["completion_tokens"] <= 12


def test_a_plain_completion_honours_stop(two_slots: Worker) -> None:
    response = httpx.post(
        f"{two_slots.url}/v1/completions",
        headers=HEADERS,
        json={"prompt": "One, two, three, four,", "max_tokens": 16, "stop": ["seven"], "seed": 3},
        timeout=60,
    )
    assert response.status_code == 200
    text = response.json()["choices"][0]["text"]
    assert text.strip()
    assert "seven" not in text


def _chat(url: str, **body: Any) -> httpx.Response:
    body = {"messages": HELLO, "max_tokens": 4, "temperature": 0, **body}
    return httpx.post(f"{url}/v1/chat/completions", headers=HEADERS, json=body, timeout=60)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logit_bias", {"42": 5}),
        ("echo", True),
        ("best_of", 2),
        ("a_field_nobody_defined", 1),
    ],
)
def test_a_field_the_worker_would_ignore_is_a_400_naming_it(
    two_slots: Worker, field: str, value: Any
) -> None:
    response = _chat(two_slots.url, **{field: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith(f"{field}: not supported")
    assert error["type"] == "invalid_request_error"


def test_harmless_fields_and_defaults_are_accepted(two_slots: Worker) -> None:
    harmless = {"user": "u-1", "n": 1, "logprobs": False, "response_format": {"type": "text"}}
    response = _chat(two_slots.url, **harmless, logit_bias={}, echo=False, store=False)
    assert response.status_code == 200, response.text


def test_content_as_text_parts_reads_as_the_same_text(two_slots: Worker) -> None:
    text = HELLO[0]["content"]
    parts = [{"type": "text", "text": text}]
    as_parts = _chat(two_slots.url, messages=[{"role": "user", "content": parts}], seed=1)
    as_text = _chat(two_slots.url, seed=1)
    assert as_parts.status_code == 200, as_parts.text
    assert as_parts.json()["choices"] == as_text.json()["choices"]
    assert as_parts.json()["usage"] == as_text.json()["usage"]


@pytest.mark.parametrize(
    ("message", "named"),
    [
        (
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
            "messages.1.content.1: only text parts",
        ),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
            "messages.1.tool_calls.0.function.name: required",
        ),
        (
            {"role": "assistant", "content": None, "function_call": {"name": "f"}},
            "messages.1.function_call: not supported",
        ),
        ({"role": "robot", "content": "42"}, "messages.1.role: 'robot'"),
    ],
)
def test_what_a_text_model_cannot_read_is_a_400_naming_where(
    two_slots: Worker, message: dict[str, Any], named: str
) -> None:
    response = _chat(two_slots.url, messages=[HELLO[0], message])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith(named)


def test_an_assistant_turn_without_content_is_read(two_slots: Worker) -> None:
    history = [
        *HELLO,
        {"role": "assistant", "content": None},
        {"role": "user", "content": "Again."},
    ]
    assert _chat(two_slots.url, messages=history).status_code == 200


def test_include_usage_ends_a_stream_with_a_usage_chunk(two_slots: Worker) -> None:
    body = {"messages": HELLO, "max_tokens": 6, "stream_options": {"include_usage": True}}
    events = _stream(two_slots.url, "/v1/chat/completions", body)
    assert events[-1][1] == "[DONE]"
    last = json.loads(events[-2][1])
    assert last["choices"] == [] and last["object"] == "chat.completion.chunk"
    usage = last["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Without it, no chunk without choices.
    plain = _stream(two_slots.url, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 6})
    assert all(json.loads(data)["choices"] for _, data in plain[:-1])
    # And only with a stream, as OpenAI's.
    refused = _chat(two_slots.url, stream_options={"include_usage": True})
    assert refused.status_code == 400
    assert "stream_options: only with stream: true" in refused.json()["error"]["message"]


def test_models_lists_the_loaded_model(two_slots: Worker) -> None:
    models = httpx.get(f"{two_slots.url}/v1/models", headers=HEADERS, timeout=5).json()
    assert [entry["id"] for entry in models["data"]] == ["gemma3-270m"]


def test_malformed_json_is_a_400_openai_error(two_slots: Worker) -> None:
    response = httpx.post(
        f"{two_slots.url}/v1/chat/completions",
        content=b'{"messages": [',
        headers=HEADERS,
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_prompt_longer_than_any_context_holds_is_refused_before_it_is_tokenized(
    two_slots: Worker,
) -> None:
    """7 MiB of text: more bytes than the context's tokens times the longest token's bytes,
    so a 400 that says so, not 4 s of tokenizing on the event loop first. The worker answers
    on: the next request is served."""
    body = {"prompt": "bee " * (7 << 18), "max_tokens": 1}
    refused = httpx.post(f"{two_slots.url}/v1/completions", json=body, headers=HEADERS, timeout=60)
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]
    assert message.startswith(
        f"the prompt is {7 << 20} bytes, more than this worker's context holds (512 tokens per "
    )  # launch_worker's --ctx-size
    small = {"prompt": "The bee", "max_tokens": 2}
    answer = httpx.post(f"{two_slots.url}/v1/completions", json=small, headers=HEADERS, timeout=60)
    assert answer.status_code == 200


def test_two_slots_generate_two_answers_at_once(queen: FakeQueen, two_slots: Worker) -> None:
    results: list[list[tuple[float, str]]] = []
    body = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "seed": 1}
    threads = [
        threading.Thread(
            target=lambda: results.append(_stream(two_slots.url, "/v1/completions", body))
        )
        for _ in range(2)
    ]
    busy_seen: list[int] = []
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        busy_seen.append(two_slots.health()["slots_busy"])
        time.sleep(0.02)
    for thread in threads:
        thread.join()
    assert len(results) == 2
    assert max(busy_seen) == 2
    # Overlap: each stream's first chunk arrived before the other's last.
    (a_first, a_last), (b_first, b_last) = ((r[0][0], r[-1][0]) for r in results)
    assert a_first < b_last and b_first < a_last
    assert "busy" in queen.states(two_slots.worker_id)


def test_a_client_that_disconnects_frees_its_slot_at_once(two_slots: Worker) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", f"{two_slots.url}/v1/completions", json=body, headers=HEADERS, timeout=60
    ) as stream:
        lines = stream.iter_lines()
        for _ in range(3):
            next(line for line in lines if line)
        assert two_slots.health()["slots_busy"] == 1
    hung_up = time.monotonic()
    wait_until(lambda: two_slots.health()["slots_busy"] == 0, 2, "the slot to be freed")
    # 400 tokens at ~30 tokens/s would hold the slot for over 10 s.
    assert time.monotonic() - hung_up < 1.0


def test_sigterm_drains_in_flight_requests_then_exits(
    queen: FakeQueen, start_worker: WorkerFactory
) -> None:
    worker = start_worker()
    worker.wait_ready()
    events: list[tuple[float, str]] = []
    body = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}
    streaming = threading.Thread(
        target=lambda: events.extend(_stream(worker.url, "/v1/completions", body))
    )
    streaming.start()
    wait_until(lambda: worker.health()["slots_busy"] == 1, 10, "the request to start")
    worker.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: worker.health()["state"] == "draining", 2, "state draining")
    refused = httpx.post(
        f"{worker.url}/v1/completions", json={"prompt": "Hi"}, headers=HEADERS, timeout=5
    )
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "draining"
    streaming.join(timeout=30)
    assert events[-1][1] == "[DONE]"
    assert worker.proc.wait(timeout=5) == 0
    assert "draining" in queen.states(worker.worker_id)


def test_the_demo_model_answers_through_its_own_chat_template(
    start_worker: WorkerFactory,
) -> None:
    worker = start_worker(model=demo_model_path())
    worker.wait_ready()
    body = {"messages": HELLO, "max_tokens": 48, "temperature": 0}
    response = httpx.post(
        worker.url + "/v1/chat/completions", json=body, headers=HEADERS, timeout=60
    )
    assert response.status_code == 200, response.text
    answer = response.json()["choices"][0]["message"]["content"]
    # SmolLM2 answers the question (gemma, a base model, rambles on from the prompt instead).
    assert answer.startswith("Bees are"), answer
    assert "<|im_" not in answer


def test_a_worker_without_a_token_or_an_identity_refuses_to_start(
    start_worker: WorkerFactory,
) -> None:
    """Neither RBEE_TOKEN nor --identity: it would answer anyone on the machine, around the
    queen's keys and limits. One line, exit 1, nothing listening."""
    worker = start_worker(token=None)
    assert worker.proc.wait(timeout=30) == 1
    stderr = worker.stderr.read_text()
    assert "needs --identity or RBEE_TOKEN" in stderr
    assert "Traceback" not in stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{worker.url}/health", timeout=2)


def test_a_port_in_use_is_one_line_and_exit_1(queen: FakeQueen) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [
            sys.executable, "-m", "rbee.worker.server",
            "--worker-id", "w", "--hive", "h", "--model", "m",
            "--model-path", "/nowhere.gguf", "--worker-binary", "cpu",
            "--port", str(port), "--queen-url", queen.url,
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use "
        "(stop what listens there or choose another --port)"
    ]


def test_a_stream_announces_its_prompts_tokens_in_its_head(two_slots: Worker) -> None:
    """The queen counts a stream's prompt against the key's tpm from this header: the same
    count the answer's usage gives without streaming."""
    body = {"prompt": "The bee flies over the", "max_tokens": 2, "temperature": 0}
    whole = httpx.post(f"{two_slots.url}/v1/completions", json=body, headers=HEADERS, timeout=60)
    expected = whole.json()["usage"]["prompt_tokens"]
    with httpx.stream(
        "POST",
        f"{two_slots.url}/v1/completions",
        json={**body, "stream": True},
        headers=HEADERS,
        timeout=60,
    ) as streamed:
        streamed.read()
    assert expected > 3
    assert streamed.headers["x-rbee-prompt-tokens"] == str(expected)
