"""A recording stand-in for the queen, and real worker processes on free ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fixtures.ports import free_port

START_TIMEOUT_S = 30.0
#: The token of the tests' workers (a worker without TLS needs one).
TOKEN = "worker-test-token"
#: What a caller of those workers sends.
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check` every 20 ms; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Beat:
    at: float
    body: dict[str, Any]
    authorization: str | None


@dataclass
class FakeQueen:
    """Records every heartbeat it receives; answers 200."""

    url: str = ""
    beats: list[Beat] = field(default_factory=list)

    def of(self, worker_id: str) -> list[Beat]:
        return [beat for beat in list(self.beats) if beat.body.get("worker_id") == worker_id]

    def states(self, worker_id: str) -> list[str]:
        return [beat.body["state"] for beat in self.of(worker_id)]


@pytest.fixture(scope="session")
def queen() -> Iterator[FakeQueen]:
    """A queen stand-in (uvicorn in a thread) recording `POST /v1/workers/heartbeat`."""
    recorder = FakeQueen()

    async def heartbeat(request: Request) -> Response:
        body = json.loads(await request.body())
        recorder.beats.append(Beat(time.monotonic(), body, request.headers.get("authorization")))
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/v1/workers/heartbeat", heartbeat, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "the fake queen")
    recorder.url = f"http://127.0.0.1:{port}"
    yield recorder
    server.should_exit = True
    thread.join(timeout=10)


@dataclass
class Worker:
    """A running `llm-worker-rbee` process."""

    worker_id: str
    port: int
    proc: subprocess.Popen[bytes]
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/health", timeout=5)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def wait_ready(self) -> None:
        def idle() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited rc={self.proc.returncode}: {self.stderr.read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                return bool(self.health()["state"] == "idle")
            return False

        wait_until(idle, START_TIMEOUT_S, "the worker to load its model")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def launch_worker(
    queen_url: str,
    gguf: Path,
    directory: Path,
    *extra: str,
    slots: int = 1,
    token: str | None = TOKEN,
    name: str = "gemma3-270m",
) -> Worker:
    """Spawn `python -m rbee.worker.server` the way a hive without TLS does (flags, the token
    by env only; `token=None`: none at all), serving `gguf` as the model `name`."""
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RBEE_TOKEN"}
    if token:
        env["RBEE_TOKEN"] = token
    stderr = directory / f"{worker_id}.stderr"
    argv = [
        sys.executable, "-m", "rbee.worker.server",
        "--worker-id", worker_id,
        "--hive", "test-hive",
        "--model", name,
        "--model-path", str(gguf),
        "--worker-binary", "cpu",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--slots", str(slots),
        "--ctx-size", "512",
        "--device", "cpu",
        "--queen-url", queen_url,
        *extra,
    ]  # fmt: skip
    with stderr.open("wb") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
    return Worker(worker_id, port, proc, stderr)


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def start_worker(queen: FakeQueen, gguf: Path, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start workers of the real model heartbeating to the fake queen; killed at teardown."""
    started: list[Worker] = []

    def start(
        *extra: str, slots: int = 1, token: str | None = TOKEN, model: Path | None = None
    ) -> Worker:
        path = gguf if model is None else model
        worker = launch_worker(queen.url, path, tmp_path, *extra, slots=slots, token=token)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def two_slots(
    queen: FakeQueen, gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """One loaded worker with 2 slots of 1 thread each, shared by a module's tests."""
    directory = tmp_path_factory.mktemp("worker")
    worker = launch_worker(queen.url, gguf, directory, "--threads", "1", slots=2)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()
