"""Admission at the queen: free slots only, a bounded queue per model, body size, rate limits.

A real queen process; scripted workers (tests/fixtures/scripted.py) hold slots for a known time.
What the front door answers by itself (keys, scopes, body size) is the queen's app in this
process (`tests.fixtures.in_process_queen`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.in_process_queen import in_process_queen
from tests.fixtures.pki import authority, client_tls
from tests.fixtures.scripted import (
    MODEL,
    TOKEN,
    TOKENS,
    ScriptedQueen,
    ScriptedWorkers,
    scripted_workers,
)

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
    responses = asyncio.run(_concurrently(queen.url, 6, queen.headers))
    assert [r.status_code for r in responses] == [200] * 6
    assert scripted.most_concurrent == 2  # never more than the worker's slots
    metrics = queen.metrics()
    # Four waited: two slots, six requests; the waits show in the histogram.
    assert _sample(metrics, "rbee_queen_queue_seconds_count", model=MODEL) == 6
    assert _sample(metrics, "rbee_queen_queue_seconds_bucket", model=MODEL, le="0.1") <= 2


def test_a_full_queue_is_503_with_retry_after(start: Any, scripted: ScriptedWorkers) -> None:
    queen = start({"max_queue": 1, "queue_timeout": 20})
    queen.add_worker("w", scripted.worker("hold:1"), slots=1)
    responses = asyncio.run(_concurrently(queen.url, 3, queen.headers))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503]
    [refused] = [r for r in responses if r.status_code == 503]
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "queue_full"
    assert _sample(queen.metrics(), "rbee_queen_rejected_total", reason="queue_full") == 1


def test_a_wait_past_queue_timeout_is_504(start: Any, scripted: ScriptedWorkers) -> None:
    queen = start({"max_queue": 5, "queue_timeout": 0.3})
    queen.add_worker("w", scripted.worker("hold:1.5"), slots=1)
    responses = asyncio.run(_concurrently(queen.url, 2, queen.headers))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 504]
    [late] = [r for r in responses if r.status_code == 504]
    assert late.json()["error"]["code"] == "queue_timeout"
    assert _sample(queen.metrics(), "rbee_queen_timeouts_total", kind="queue") == 1


def test_a_body_over_the_limit_is_413_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process_queen(tmp_path, monkeypatch, TOKEN, max_body_bytes=10 * 1024) as queen:
        big = {**BODY, "messages": [{"role": "user", "content": "x" * 20_000}]}
        response = queen.client.post("/v1/chat/completions", json=big, headers=queen.headers)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"model": "scripted", "pad": "'
            for _ in range(20):
                yield b"x" * 1000
            yield b'"}'

        response = queen.client.post(
            "/v1/chat/completions", content=chunked(), headers=queen.headers
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413


_GUARDED = [
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/status"),
    ("POST", "/v1/apply"),
    ("GET", "/metrics"),
]


def _refuses_without_a_credential(client: httpx.Client) -> None:
    """Every route but /health: 401 without a credential, and with a wrong one."""
    assert client.get("/health").status_code == 200
    for method, path in _GUARDED:
        refused = client.request(method, path, json=BODY)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["type"] == "authentication_error"
        wrong = client.request(
            method, path, json=BODY, headers={"authorization": "Bearer rbee_nope"}
        )
        assert wrong.status_code == 401, path


def test_keys_scopes_and_no_open_loopback_queen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process_queen(tmp_path, monkeypatch, TOKEN) as queen:
        client = queen.client
        # No key yet, loopback: a credential all the same (there is no open mode any more).
        _refuses_without_a_credential(client)
        # The cluster token makes the first key.
        admin = queen.key("ops", "admin")
        assert admin.startswith("rbee_")
        as_admin = {"authorization": f"Bearer {admin}"}
        made = client.post("/v1/keys", json={"name": "app", "scope": "inference"}, headers=as_admin)
        inference = made.json()["key"]
        as_app = {"authorization": f"Bearer {inference}"}
        # With keys, the same: every route but /health needs a credential.
        _refuses_without_a_credential(client)
        # Inference keys: the OpenAI routes only (their answers: the next test).
        assert client.get("/v1/models", headers=as_app).status_code == 200
        for method, path in [
            ("GET", "/v1/status"),
            ("POST", "/v1/down"),
            ("POST", "/v1/shutdown"),
            ("POST", "/v1/lock/force-unlock"),
            ("GET", "/v1/keys"),
            ("GET", "/metrics"),
        ]:
            forbidden = client.request(method, path, json={}, headers=as_app)
            assert forbidden.status_code == 403, path
            assert forbidden.json()["error"]["code"] == "insufficient_scope"
        # Admin keys: everything.
        assert client.get("/v1/status", headers=as_admin).status_code == 200
        listed = client.get("/v1/keys", headers=as_admin).json()
        assert [(k["name"], k["scope"]) for k in listed] == [("app", "inference"), ("ops", "admin")]
        assert all(inference not in str(k) and admin not in str(k) for k in listed)
        # The database keeps hashes, never the keys.
        assert inference.encode() not in queen.db.read_bytes()
        # Revoked: refused from then on.
        assert client.delete("/v1/keys/app", headers=as_admin).status_code == 200
        assert client.get("/v1/models", headers=as_app).status_code == 401


def test_inference_and_admin_keys_get_the_workers_answers(
    start: Any, scripted: ScriptedWorkers
) -> None:
    queen = start({})
    queen.add_worker("w", scripted.worker("ok"))
    url = queen.url
    admin = httpx.post(
        f"{url}/v1/keys", json={"name": "ops", "scope": "admin"}, headers=queen.headers
    ).json()["key"]
    as_admin = {"authorization": f"Bearer {admin}"}
    inference = httpx.post(
        f"{url}/v1/keys", json={"name": "app", "scope": "inference"}, headers=as_admin
    ).json()["key"]
    as_app = {"authorization": f"Bearer {inference}"}
    answer = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=as_app, timeout=10)
    assert answer.json()["choices"][0]["message"]["content"] == "".join(TOKENS)
    assert httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=as_admin).status_code == 200


def test_a_queen_with_a_cluster_token_needs_a_credential_even_without_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process_queen(tmp_path, monkeypatch, "cluster-secret") as queen:
        assert queen.client.get("/v1/models").status_code == 401
        as_operator = {"authorization": "Bearer cluster-secret"}
        assert queen.client.get("/v1/status", headers=as_operator).status_code == 200


def test_heartbeats_need_the_certificate_of_the_worker_they_name(
    start: Any, scripted: ScriptedWorkers
) -> None:
    """Workers heartbeat on the cluster listener only, each with its own certificate: the
    front door serves no heartbeat, whatever credential comes with it."""
    queen = start({})
    queen.add_worker("w", scripted.worker("ok"))  # beats with the certificate of local/w
    beat = {**queen.workers["w"], "worker_id": "intruder"}
    key = httpx.post(f"{queen.url}/v1/keys", json={"name": "app"}, headers=queen.headers).json()[
        "key"
    ]
    for headers in [{}, queen.headers, {"authorization": f"Bearer {key}"}]:
        front = httpx.post(f"{queen.url}/v1/workers/heartbeat", json=beat, headers=headers)
        # No such route (405: the path is also GET /v1/workers/{worker_id}'s).
        assert front.status_code in (401, 403, 404, 405), front.text
    # No client certificate: the handshake fails, or the listener answers 401.
    anonymous = ssl.create_default_context(cadata=authority().ca_pem.decode())
    try:
        status = httpx.post(
            f"{queen.cluster_url}/v1/workers/heartbeat", json=beat, verify=anonymous, timeout=5
        ).status_code
    except httpx.TransportError:
        status = None
    assert status in (None, 401)
    # Another worker's certificate, the same worker of another hive, another role: 403.
    assert queen.beat(beat, tls=client_tls("worker", "local/w")).status_code == 403
    assert queen.beat(beat, tls=client_tls("worker", "elsewhere/intruder")).status_code == 403
    assert queen.beat(beat, tls=client_tls("hive", "local")).status_code == 403
    # Its own certificate, but a worker that serves plain HTTP: 422 (no prompt in clear).
    plain = {**beat, "url": scripted.worker("ok").replace("https://", "http://")}
    assert queen.beat(plain).status_code == 422
    # Its own certificate, but sent as a page would send it cross-site (text/plain).
    with httpx.Client(verify=client_tls("worker", "local/intruder"), timeout=5) as page:
        cross = page.post(
            f"{queen.cluster_url}/v1/workers/heartbeat",
            content=json.dumps(beat),
            headers={"content-type": "text/plain", "origin": "https://evil.example"},
        )
    assert cross.status_code in (403, 415), cross.text
    assert "intruder" not in queen.listed()
    assert queen.beat(beat).status_code == 204  # the right certificate is all it takes
    assert "intruder" in queen.listed()


def test_requests_per_minute_is_429_with_retry_after(start: Any, scripted: ScriptedWorkers) -> None:
    queen = start({})
    queen.add_worker("w", scripted.worker("ok"))
    key = httpx.post(
        f"{queen.url}/v1/keys", json={"name": "app", "rpm": 2}, headers=queen.headers
    ).json()["key"]
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
    key = httpx.post(
        f"{queen.url}/v1/keys", json={"name": "app", "tpm": 10}, headers=queen.headers
    ).json()["key"]
    headers = {"authorization": f"Bearer {key}"}
    statuses = [
        httpx.post(f"{queen.url}/v1/chat/completions", json=BODY, headers=headers).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]  # 8 of 10, then 16 of 10: the third waits


def test_a_streams_prompt_tokens_count_against_tokens_per_minute(
    start: Any, scripted: ScriptedWorkers
) -> None:
    """A stream tells its prompt's tokens in its head (its body tells them only at the end,
    and only when asked): 3 prompt + 5 completion tokens a stream, so a second stream already
    passes a tpm of 14 (counting the completions alone, 10, it would not)."""
    queen = start({})
    queen.add_worker("w", scripted.worker("ok"))
    key = httpx.post(
        f"{queen.url}/v1/keys", json={"name": "app", "tpm": 14}, headers=queen.headers
    ).json()["key"]
    headers = {"authorization": f"Bearer {key}"}
    statuses = []
    for _ in range(3):
        with httpx.stream(
            "POST",
            f"{queen.url}/v1/chat/completions",
            json={**BODY, "stream": True},
            headers=headers,
        ) as response:
            response.read()
            statuses.append(response.status_code)
            assert "x-rbee-prompt-tokens" not in response.headers  # the queen's business only
    assert statuses == [200, 200, 429]


def test_metrics_after_a_known_workload(start: Any, scripted: ScriptedWorkers) -> None:
    queen = start({})
    queen.add_worker("w", scripted.worker("ok"), slots=3)
    url, headers = f"{queen.url}/v1/chat/completions", queen.headers
    for _ in range(3):
        assert httpx.post(url, json=BODY, headers=headers).status_code == 200
    streamed = httpx.post(url, json={**BODY, "stream": True}, headers=headers)
    assert streamed.status_code == 200
    missing = httpx.post(url, json={**BODY, "model": "nope"}, headers=headers)
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
        f"{queen.url}/v1/chat/completions",
        json=BODY,
        headers={**queen.headers, "x-request-id": "trace-42"},
    )
    assert given.headers["x-request-id"] == "trace-42"
    made = httpx.get(f"{queen.url}/v1/status", headers=queen.headers)
    assert made.status_code == 200
    assert len(made.headers["x-request-id"]) == 24
    refused = httpx.post(
        f"{queen.url}/v1/chat/completions", json={**BODY, "model": "nope"}, headers=queen.headers
    )
    assert refused.status_code == 404
    assert refused.headers["x-request-id"]
    unauthenticated = httpx.get(f"{queen.url}/v1/status")
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["x-request-id"]
