"""The relay, isolated: a scripted worker (not a model) behind a real queen process.

The scripted worker sends SSE chunks with pauses, so the test can tell relaying as bytes
arrive from buffering the whole answer; a second, dead worker checks fail-over. As real
workers do, it serves TLS with a certificate of the tests' CA and heartbeats to the queen's
cluster listener with its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tests.fixtures.pki import client_tls, server_tls_for_any
from tests.fixtures.ports import free_port
from tests.fixtures.scripted import ScriptedQueen

CHUNKS = 5
PAUSE_S = 0.3


async def _scripted_completion(request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for index in range(CHUNKS):
            yield f'data: {{"choices":[{{"delta":{{"content":"t{index} "}}}}]}}\n\n'.encode()
            await asyncio.sleep(PAUSE_S)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


@pytest.fixture
def scripted_worker() -> Iterator[str]:
    """The scripted worker, serving TLS with a worker certificate of the tests' CA."""
    port = free_port()
    app = Starlette(routes=[Route("/v1/chat/completions", _scripted_completion, methods=["POST"])])
    config = uvicorn.Config(app, port=port, log_level="warning")
    config.load()
    config.ssl = server_tls_for_any("worker")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"https://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


@pytest.fixture
def queen(tmp_path: Path) -> Iterator[ScriptedQueen]:
    """A real queen process, with the tests' CA as its cluster CA."""
    queen = ScriptedQueen.start(tmp_path)
    yield queen
    queen.stop()


def _beat(worker_id: str, url: str) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "hive": "local",
        "model": "scripted",
        "worker_binary": "cpu",
        "url": url,
        "pid": 1,
        "device": "cpu",
        "state": "idle",
        "slots_total": 1,
        "slots_busy": 0,
    }


def _heartbeat(queen: ScriptedQueen, worker_id: str, url: str) -> None:
    """One heartbeat over the cluster listener, with the certificate of local/`worker_id`."""
    beat = queen.beat(_beat(worker_id, url), tls=client_tls("worker", f"local/{worker_id}"))
    assert beat.status_code == 204, beat.text


def test_stream_is_relayed_as_it_arrives(queen: ScriptedQueen, scripted_worker: str) -> None:
    _heartbeat(queen, "w1", scripted_worker)
    body = {"model": "scripted", "stream": True, "messages": []}
    arrivals: list[float] = []
    with httpx.stream(
        "POST", f"{queen.url}/v1/chat/completions", json=body, headers=queen.headers, timeout=10
    ) as response:
        assert response.headers["x-rbee-worker"] == "w1"
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == CHUNKS
    # Each chunk arrived about when the worker sent it, not all at the end.
    assert arrivals[-1] - arrivals[0] > (CHUNKS - 2) * PAUSE_S


def test_a_refusing_worker_is_dropped_and_another_serves(
    queen: ScriptedQueen, scripted_worker: str
) -> None:
    _heartbeat(queen, "a-dead", f"https://127.0.0.1:{free_port()}")
    _heartbeat(queen, "b-live", scripted_worker)
    body = {"model": "scripted", "stream": False, "messages": []}
    for _ in range(3):
        response = httpx.post(
            f"{queen.url}/v1/chat/completions", json=body, headers=queen.headers, timeout=10
        )
        assert response.status_code == 200
        assert response.headers["x-rbee-worker"] == "b-live"
    assert list(queen.listed()) == ["b-live"]


def test_model_without_live_worker_is_503_and_unknown_is_404(queen: ScriptedQueen) -> None:
    _heartbeat(queen, "dead", f"https://127.0.0.1:{free_port()}")
    body = {"model": "scripted", "messages": []}
    url = f"{queen.url}/v1/chat/completions"
    response = httpx.post(url, json=body, headers=queen.headers, timeout=10)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_worker"
    response = httpx.post(
        url, json={"model": "nope", "messages": []}, headers=queen.headers, timeout=10
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("worker_id", "w\x1b]0;pwned\x07\x1b[2J"),
        ("worker_id", "w\nforged line"),
        ("hive", "local\x1b[31m"),
        ("url", "https://127.0.0.1:9/\x1b[2J"),
        ("device", "cpu \x08"),
    ],
)
def test_a_heartbeat_naming_a_terminal_escape_is_refused(
    queen: ScriptedQueen, field: str, value: str
) -> None:
    """What a heartbeat names is printed by `rbee worker list` and the status page: a sender
    must not write escape sequences (or lines of its own) into the operator's terminal, even
    with the certificate of the very name it sends."""
    beat = {**_beat("w1", "https://127.0.0.1:9"), field: value}
    refused = queen.beat(beat)  # with the certificate of beat's hive/worker_id
    assert refused.status_code == 422, refused.text
    assert field in refused.json()["error"]["message"]
    assert queen.listed() == {}
