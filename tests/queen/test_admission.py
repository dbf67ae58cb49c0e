"""Admission at the queen: free slots only, a bounded queue per model, body size, rate limits.

A real queen process; scripted workers (tests/fixtures/scripted.py) hold slots for a known time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.scripted import MODEL, TOKENS, ScriptedQueen, ScriptedWorkers, scripted_workers

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedWorkers]:
    yield from scripted_workers()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[ScriptedQueen] = []

    def start(serving: dict[str, Any] | None = None, **kwargs: Any) -> ScriptedQueen:
        queen = ScriptedQueen.start(tmp_path, serving, **kwargs)
        started.append(queen)
        return queen

    yield start
    for queen in started:
        queen.stop()


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


async def _concurrently(
    url: str, count: int, headers: dict[str, str] | None = None, stream: bool = False
) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        return await asyncio.gather(
            *(
                client.post(f"{url}/v1/chat/completions", json={**BODY, "stream": stream})
                for _ in range(count)
            )
        )


def test_only_free_slots_get_requests_and_the_rest_wait_their_turn(
    start: Any, scripted: ScriptedWorkers
) -> None:
    queen = start({"max_queue": 10, "queue_timeout": 20})
    queen.add_worker("w", scripted.worker("hold:0.5"), slots=2)
    scripted.most_concurrent = 0
    responses = asyncio.run(_concurrently(queen.url, 6))
    assert [r.status_code for r in responses] == [200] * 6
    assert scripted.most_concurrent == 2  # never more than the worker's slots
    metrics = queen.metrics()
    # Four waited: two slots, six requests; the waits show in the histogram.
    assert _sample(metrics, "rbee_queen_queue_seconds_count", model=MODEL) == 6
    assert _sample(metrics, "rbee_queen_queue_seconds_bucket", model=MODEL, le="0.1") <= 2


def test_a_full_queue_is_503_with_retry_after(start: Any, scripted: ScriptedWorkers) -> None:
    queen = start({"max_queue": 1, "queue_timeout": 20})
    queen.add_worker("w", scripted.worker("hold:1"), slots=1)
    responses = asyncio.run(_concurrently(queen.url, 3))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503]
    [refused] = [r for r in responses if r.status_code == 503]
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "queue_full"
    assert _sample(queen.metrics(), "rbee_queen_rejected_total", reason="queue_full") == 1


def test_a_wait_past_queue_timeout_is_504(start: Any, scripted: ScriptedWorkers) -> None:
    queen = start({"max_queue": 5, "queue_timeout": 0.3})
    queen.add_worker("w", scripted.worker("hold:1.5"), slots=1)
    responses = asyncio.run(_concurrently(queen.url, 2))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 504]
    [late] = [r for r in responses if r.status_code == 504]
    assert late.json()["error"]["code"] == "queue_timeout"
    assert _sample(queen.metrics(), "rbee_queen_timeouts_total", kind="queue") == 1


def test_a_body_over_the_limit_is_413_before_it_is_read(start: Any) -> None:
    queen = start(args=["--max-body-mb", "0.01"])  # 10 KiB
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 20_000}]}
    response = httpx.post(f"{queen.url}/v1/chat/completions", json=big, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "scripted", "pad": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}'

    response = httpx.post(f"{queen.url}/v1/chat/completions", content=chunked(), timeout=10)
    assert response.status_code == 413


def test_keys_scopes_and_the_open_loopback_queen(start: Any, scripted: ScriptedWorkers) -> None:
    queen = start({})
    queen.add_worker("w", scripted.worker("ok"))
    url = queen.url
    # No key yet, loopback, no cluster token: open, as the demo needs.
    assert httpx.get(f"{url}/v1/status", timeout=10).status_code == 200
    admin = httpx.post(f"{url}/v1/keys", json={"name": "ops", "scope": "admin"}).json()["key"]
    assert admin.startswith("rbee_")
    as_admin = {"authorization": f"Bearer {admin}"}
    inference = httpx.post(
        f"{url}/v1/keys", json={"name": "app", "scope": "inference"}, headers=as_admin
    ).json()["key"]
    as_app = {"authorization": f"Bearer {inference}"}
    # From the first key on, every route but /health needs one.
    assert httpx.get(f"{url}/health").status_code == 200
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/status"),
        ("POST", "/v1/apply"),
        ("GET", "/metrics"),
    ]:
        refused = httpx.request(method, f"{url}{path}", json=BODY)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["type"] == "authentication_error"
        wrong = httpx.request(
            method, f"{url}{path}", json=BODY, headers={"authorization": "Bearer rbee_nope"}
        )
        assert wrong.status_code == 401, path
    # Inference keys: the OpenAI routes only.
    assert httpx.get(f"{url}/v1/models", headers=as_app).status_code == 200
    answer = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=as_app, timeout=10)
    assert answer.json()["choices"][0]["message"]["content"] == "".join(TOKENS)
    for method, path in [
        ("GET", "/v1/status"),
        ("POST", "/v1/down"),
        ("POST", "/v1/shutdown"),
        ("POST", "/v1/lock/force-unlock"),
        ("GET", "/v1/keys"),
        ("GET", "/metrics"),
    ]:
        forbidden = httpx.request(method, f"{url}{path}", json={}, headers=as_app)
        assert forbidden.status_code == 403, path
        assert forbidden.json()["error"]["code"] == "insufficient_scope"
    # Admin keys: everything.
    assert httpx.get(f"{url}/v1/status", headers=as_admin).status_code == 200
    assert httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=as_admin).status_code == 200
    listed = httpx.get(f"{url}/v1/keys", headers=as_admin).json()
    assert [(k["name"], k["scope"]) for k in listed] == [("app", "inference"), ("ops", "admin")]
    assert all(inference not in str(k) and admin not in str(k) for k in listed)
    # The database keeps hashes, never the keys.
    assert inference.encode() not in queen.db.read_bytes()
    # Revoked: refused from then on.
    assert httpx.delete(f"{url}/v1/keys/app", headers=as_admin).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers=as_app).status_code == 401


def test_a_queen_with_a_cluster_token_needs_a_credential_even_without_keys(
    start: Any, scripted: ScriptedWorkers
) -> None:
    queen = start({}, token="cluster-secret")
    queen.add_worker("w", scripted.worker("ok"))  # heartbeats carry the token
    assert httpx.get(f"{queen.url}/v1/models").status_code == 401
    beat = {**queen.workers["w"], "worker_id": "intruder"}
    assert httpx.post(f"{queen.url}/v1/workers/heartbeat", json=beat).status_code == 401
    as_operator = {"authorization": "Bearer cluster-secret"}
    assert httpx.get(f"{queen.url}/v1/status", headers=as_operator).status_code == 200
    key = httpx.post(f"{queen.url}/v1/keys", json={"name": "app"}, headers=as_operator).json()[
        "key"
    ]
    beat_with_key = httpx.post(
        f"{queen.url}/v1/workers/heartbeat", json=beat, headers={"authorization": f"Bearer {key}"}
    )
    assert beat_with_key.status_code == 403  # worker traffic is the cluster token's
    assert "intruder" not in queen.listed()


def test_requests_per_minute_is_429_with_retry_after(start: Any, scripted: ScriptedWorkers) -> None:
    queen = start({})
    queen.add_worker("w", scripted.worker("ok"))
    key = httpx.post(f"{queen.url}/v1/keys", json={"name": "app", "rpm": 2}).json()["key"]
    headers = {"authorization": f"Bearer {key}"}
    statuses = []
    for _ in range(3):
        response = httpx.post(f"{queen.url}/v1/chat/completions", json=BODY, headers=headers)
        statuses.append(response.status_code)
    assert statuses == [200, 200, 429]
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(response.headers["retry-after"]) <= 31  # half a minute buys one request


def test_tokens_per_minute_is_429_once_spent(start: Any, scripted: ScriptedWorkers) -> None:
    queen = start({})
    queen.add_worker("w", scripted.worker("ok"))  # each answer: 3 prompt + 5 completion tokens
    key = httpx.post(f"{queen.url}/v1/keys", json={"name": "app", "tpm": 10}).json()["key"]
    headers = {"authorization": f"Bearer {key}"}
    statuses = [
        httpx.post(f"{queen.url}/v1/chat/completions", json=BODY, headers=headers).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]  # 8 of 10, then 16 of 10: the third waits


def test_metrics_after_a_known_workload(start: Any, scripted: ScriptedWorkers) -> None:
    queen = start({})
    queen.add_worker("w", scripted.worker("ok"), slots=3)
    for _ in range(3):
        assert httpx.post(f"{queen.url}/v1/chat/completions", json=BODY).status_code == 200
    streamed = httpx.post(f"{queen.url}/v1/chat/completions", json={**BODY, "stream": True})
    assert streamed.status_code == 200
    missing = httpx.post(f"{queen.url}/v1/chat/completions", json={**BODY, "model": "nope"})
    assert missing.status_code == 404
    metrics = queen.metrics()
    assert _sample(metrics, "rbee_queen_requests_total", model=MODEL, status="200") == 4
    assert _sample(metrics, "rbee_queen_requests_total", model="(unknown)", status="404") == 1
    # 5 tokens a non-streamed answer (its usage), 5 streamed chunks of a token each.
    assert _sample(metrics, "rbee_queen_tokens_out_total", model=MODEL) == 4 * len(TOKENS)
    assert _sample(metrics, "rbee_queen_time_to_first_token_seconds_count", model=MODEL) == 4
    assert _sample(metrics, "rbee_queen_worker_slots", worker="w") == 3
    assert _sample(metrics, "rbee_queen_worker_slots_busy", worker="w") == 0
    assert _sample(metrics, "rbee_queen_workers_up", model=MODEL, state="idle") == 1
    assert _sample(metrics, "rbee_queen_queue_depth", model=MODEL) == 0
    assert _sample(metrics, "rbee_queen_retries_total", model=MODEL) == 0


def test_every_response_carries_a_request_id(start: Any, scripted: ScriptedWorkers) -> None:
    queen = start({})
    queen.add_worker("w", scripted.worker("ok"))
    given = httpx.post(
        f"{queen.url}/v1/chat/completions", json=BODY, headers={"x-request-id": "trace-42"}
    )
    assert given.headers["x-request-id"] == "trace-42"
    made = httpx.get(f"{queen.url}/v1/status")
    assert len(made.headers["x-request-id"]) == 24
    refused = httpx.post(f"{queen.url}/v1/chat/completions", json={**BODY, "model": "nope"})
    assert refused.headers["x-request-id"]
