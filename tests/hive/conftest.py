"""Real hive daemons on free ports, each with its own temporary HOME; workers cleaned up.

A hive starts as the queen starts it: with a TLS identity of the tests' CA (`--identity`),
serving mutual TLS; `Hive.client()` calls it holding a queen's certificate. `tls=False`
starts one with a bearer token instead (`TOKEN`), as a hive started by hand runs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from rbee.pki import Role
from rbee.process import terminate
from tests.fixtures.model import MODEL_SHA256
from tests.fixtures.pki import authority, client_tls, identity

START_TIMEOUT_S = 30.0
WORKER_START_S = 60.0
MODEL = "gemma3-270m"


#: The bearer token of a hive started with `tls=False`.
TOKEN = "hive-test-token"


@dataclass
class Hive:
    """A running `rbee-hive` process."""

    name: str
    port: int
    home: Path
    proc: subprocess.Popen[bytes]
    stderr: Path
    tls: bool = True

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def client(self, role: Role = "queen", name: str = "queen") -> httpx.Client:
        """A client calling as the queen does (or as `role` `name`, from the tests' CA); for a
        hive without TLS, with its token."""
        if not self.tls:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            return httpx.Client(base_url=self.url, headers=headers, timeout=30)
        return httpx.Client(base_url=self.url, verify=client_tls(role, name), timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                terminate(psutil.Process(self.proc.pid), grace_s=10)
        self.proc.wait()


def hive_env(home: Path) -> dict[str, str]:
    """The test's environment with HOME moved and no token inherited."""
    env = {k: v for k, v in os.environ.items() if k not in ("RBEE_TOKEN", "CUDA_VISIBLE_DEVICES")}
    # Builds of the plain cpu runtime may reuse the llama-cpp-python wheel that pip compiled
    # when the test environment was installed.
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    env["HOME"] = str(home)
    return env


def hive_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rbee.hive.server", *args]


def run_hive(home: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a hive that is expected to exit by itself (refused start)."""
    return subprocess.run(
        hive_command(*args), env=hive_env(home), capture_output=True, text=True, timeout=timeout
    )


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def answers_health(url: str) -> bool:
    try:
        verify = client_tls("queen", "queen") if url.startswith("https") else True
        return httpx.get(f"{url}/health", timeout=1, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


def kill_workers_of(hive_name: str) -> None:
    """Kill every process whose command line says `--hive <hive_name>` (the test's workers)."""
    victims = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(pair == ("--hive", hive_name) for pair in itertools.pairwise(cmdline)):
            victims.append(proc)
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(victims, timeout=10)


def is_gone(pid: int) -> bool:
    """The process is gone (or a zombie nobody reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


HiveFactory = Callable[..., Hive]


@pytest.fixture
def hive_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def start_hive(hive_home: Path, free_port: int) -> Iterator[HiveFactory]:
    """Start hives (same HOME, same name); all of them and their workers die at teardown."""
    name = f"test-hive-{uuid.uuid4().hex[:8]}"
    started: list[Hive] = []

    def start(
        *extra: str, port: int | None = None, env: dict[str, str] | None = None, tls: bool = True
    ) -> Hive:
        port = free_port if port is None else port
        stderr = hive_home / f"hive-{len(started)}.stderr"
        credential = ["--identity", str(identity("hive", name))] if tls else []
        token = {} if tls else {"RBEE_TOKEN": TOKEN}
        with stderr.open("wb") as err:
            proc = subprocess.Popen(
                hive_command("--port", str(port), "--name", name, *credential, *extra),
                env={**hive_env(hive_home), **token, **(env or {})},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        hive = Hive(name=name, port=port, home=hive_home, proc=proc, stderr=stderr, tls=tls)
        started.append(hive)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"hive exited rc={proc.returncode}: {stderr.read_text()}")
            return answers_health(hive.url)

        wait_until(up, START_TIMEOUT_S, "the hive's /health")
        return hive

    yield start
    for hive in started:
        hive.stop()
    kill_workers_of(name)


@pytest.fixture
def hive(start_hive: HiveFactory) -> Hive:
    return start_hive()


@pytest.fixture
def hive_with_model(hive: Hive, gguf: Path) -> Hive:
    """A hive with the real model and the default `cpu` worker binary: ready to spawn."""
    with hive.client() as client:
        assert add_model(client, MODEL, gguf)[-1]["state"] == "succeeded"
        assert add_worker_binary(client, "cpu")[-1]["state"] == "succeeded"
    return hive


def operation_events(client: httpx.Client, operation_id: str) -> list[dict[str, Any]]:
    """Every SSE event of an operation, until the server closes the stream."""
    events = []
    with client.stream("GET", f"/v1/operations/{operation_id}/events", timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


def add_model(
    client: httpx.Client, name: str, path: Path, sha256: str | None = MODEL_SHA256
) -> list[dict[str, Any]]:
    """POST a file:// model and return its operation's events."""
    body = {"name": name, "source": path.as_uri(), "sha256": sha256}
    resp = client.post("/v1/models", json=body)
    assert resp.status_code == 202, resp.text
    return operation_events(client, resp.json()["operation_id"])


def add_worker_binary(client: httpx.Client, name: str, **fields: Any) -> list[dict[str, Any]]:
    """POST a worker binary and return its operation's events."""
    resp = client.post("/v1/worker-binaries", json={"name": name, **fields})
    assert resp.status_code == 202, resp.text
    return operation_events(client, resp.json()["operation_id"])


def workers_of(client: httpx.Client, hive: Hive) -> list[dict[str, Any]]:
    """This hive's workers (other tests on the machine may run workers of their own)."""
    listed = client.get("/v1/worker-processes").json()
    return [w for w in listed if w["hive"] == hive.name]


def spawn_body(hive: Hive, worker_id: str = "w0", **fields: Any) -> dict[str, Any]:
    """A `POST /v1/worker-processes` body for `MODEL` on the cpu worker binary."""
    body = {
        "worker_id": worker_id,
        "hive": hive.name,
        "model": MODEL,
        "worker_binary": "cpu",
        "slots": 2,
        "ctx_size": 512,
        "device": "cpu",
        "chat_format": "gemma",
        "queen_url": "https://127.0.0.1:9",
    }
    if hive.tls:  # the queen sends each worker its identity with the spawn
        name = f"{hive.name}/{worker_id}"
        body["tls_identity"] = authority().issue("worker", name, ["127.0.0.1"]).decode()
    return {**body, **fields}


def spawn(client: httpx.Client, hive: Hive, worker_id: str = "w0", **fields: Any) -> dict[str, Any]:
    """Spawn a worker and return it as the hive lists it (201 expected)."""
    resp = client.post("/v1/worker-processes", json=spawn_body(hive, worker_id, **fields))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())
