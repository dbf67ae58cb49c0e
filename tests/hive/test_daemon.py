"""The hive daemon: health, capabilities, refusing to start, auth, error bodies."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import rbee
from tests.hive.conftest import Hive, HiveFactory, run_hive


def test_health_names_the_hive(hive: Hive) -> None:
    with hive.client() as client:
        body = client.get("/health").json()
    assert body == {
        "status": "ok",
        "service": "rbee-hive",
        "version": rbee.__version__,
        "pid": hive.proc.pid,
        "name": hive.name,
    }


def test_capabilities_describe_this_machine(hive: Hive) -> None:
    with hive.client() as client:
        body = client.get("/v1/capabilities").json()
    assert body["hostname"] == socket.gethostname()
    assert body["cpu_count"] == os.cpu_count()
    assert 0 < body["ram_available_bytes"] <= body["ram_total_bytes"]
    assert "cpu" in body["backends"]
    assert ("cuda" in body["backends"]) == bool(body["gpus"])


def test_port_in_use_exits_1_with_one_line_naming_the_port(hive_home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_hive(hive_home, "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(port) in lines[0]
    assert "Traceback" not in result.stderr


def test_off_loopback_without_token_is_refused(hive_home: Path, free_port: int) -> None:
    result = run_hive(hive_home, "--host", "0.0.0.0", "--port", str(free_port))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "without a token" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_guards_every_route_but_health(start_hive: HiveFactory) -> None:
    hive = start_hive("--token", "s3cret")
    with hive.client() as anonymous, hive.client(token="s3cret") as trusted:
        assert anonymous.get("/health").status_code == 200
        denied = anonymous.get("/v1/capabilities")
        assert denied.status_code == 401
        assert denied.json()["error"]["type"] == "authentication_error"
        assert anonymous.get("/v1/worker-processes").status_code == 401
        assert trusted.get("/v1/capabilities").status_code == 200
        assert trusted.get("/v1/worker-processes").status_code == 200


def test_malformed_json_is_a_400_error_body(hive: Hive) -> None:
    with hive.client() as client:
        resp = client.post("/v1/models", content=b"{not json")
        deep = client.post("/v1/models", content=b"[" * 200_000 + b"]" * 200_000)
    assert resp.status_code == 400
    assert resp.json()["error"]["message"].startswith("malformed JSON body: ")
    assert deep.status_code == 400  # was a 500: a RecursionError
    assert deep.json()["error"]["message"] == "the JSON body is nested too deeply"


def test_invalid_body_is_a_422_naming_the_field(hive: Hive) -> None:
    with hive.client() as client:
        resp = client.post("/v1/worker-processes", json={"worker_id": "w", "slots": 0})
    assert resp.status_code == 422
    message = resp.json()["error"]["message"]
    assert "hive: Field required" in message
    assert "slots:" in message
    assert "Traceback" not in resp.text


def test_unknown_route_is_a_404_error_body(hive: Hive) -> None:
    with hive.client() as client:
        resp = client.get("/v1/nothing-here")
    assert resp.status_code == 404
    assert "error" in resp.json()


def test_sigterm_exits_cleanly(hive: Hive) -> None:
    hive.stop()
    # uvicorn shuts down gracefully, then re-raises the signal it caught, as a process should.
    assert hive.proc.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in hive.stderr.read_text()
