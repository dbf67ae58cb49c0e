"""The hive daemon: health, capabilities, refusing to start, who may call it, error bodies."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
from pathlib import Path

import httpx
import pytest

import rbee
from rbee.pki import Authority, client_context, expires_at, write_private
from tests.fixtures.pki import authority, identity
from tests.hive.conftest import TOKEN, Hive, HiveFactory, add_model, run_hive


def test_health_names_the_hive(hive: Hive) -> None:
    with hive.client() as client:
        body = client.get("/health").json()
    assert body == {
        "status": "ok",
        "service": "rbee-hive",
        "version": rbee.__version__,
        "pid": hive.proc.pid,
        "name": hive.name,
        "tls_expires_at": expires_at(identity("hive", hive.name).read_bytes()).timestamp(),
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
        result = run_hive(hive_home, "--port", str(port), "--identity", str(identity("hive", "h")))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(port) in lines[0]
    assert "Traceback" not in result.stderr


def test_a_hive_with_neither_identity_nor_token_refuses_to_start(
    hive_home: Path, free_port: int
) -> None:
    """No hive answers without a credential, on loopback too."""
    result = run_hive(hive_home, "--port", str(free_port))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "needs a credential: --identity" in result.stderr
    assert "RBEE_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_hive_with_an_unreadable_identity_refuses_to_start(
    hive_home: Path, free_port: int, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.pem"
    result = run_hive(hive_home, "--port", str(free_port), "--identity", str(missing))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"cannot use the TLS identity {missing}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_mtls_hive_refuses_a_client_without_a_certificate_of_its_ca(
    hive: Hive, tmp_path: Path
) -> None:
    """The handshake fails: nothing, /health included, is served to such a client."""
    anonymous = ssl.create_default_context(cafile=authority().directory / "ca.pem")
    stranger = Authority(tmp_path / "other-ca")
    forged = write_private(tmp_path / "forged.pem", stranger.issue("queen", "queen", ["127.0.0.1"]))
    forged_context = client_context(forged)
    forged_context.load_verify_locations(cadata=authority().ca_pem.decode())
    for context in (anonymous, forged_context):
        with httpx.Client(base_url=hive.url, verify=context, timeout=10) as client:
            for path in ("/health", "/v1/capabilities"):
                with pytest.raises(httpx.TransportError):
                    client.get(path)


def test_an_mtls_hive_serves_the_queen_and_refuses_a_worker(hive: Hive) -> None:
    with hive.client("worker", f"{hive.name}/w0") as worker, hive.client() as queen:
        assert worker.get("/health").status_code == 200
        for method, path in (("GET", "/v1/capabilities"), ("GET", "/v1/worker-processes")):
            denied = worker.request(method, path)
            assert denied.status_code == 403, denied.text
            assert denied.json()["error"]["type"] == "permission_error"
        denied = worker.post("/v1/worker-binaries", json={"name": "cpu"})
        assert denied.status_code == 403
        assert queen.get("/v1/capabilities").status_code == 200
        assert queen.get("/v1/worker-processes").status_code == 200


def test_another_hive_may_copy_a_model_but_not_drive_the_hive(hive: Hive, tmp_path: Path) -> None:
    source = tmp_path / "small.bin"
    source.write_bytes(b"GGUFtiny")
    with hive.client() as queen:
        events = add_model(queen, "small", source, sha256=hashlib.sha256(b"GGUFtiny").hexdigest())
        assert events[-1]["state"] == "succeeded"
    with hive.client("hive", "peer") as peer:
        copied = peer.get("/v1/models/small/payload")
        assert copied.status_code == 200, copied.text
        assert copied.content == b"GGUFtiny"
        assert peer.get("/v1/models").status_code == 403
        denied = peer.post("/v1/worker-binaries", json={"name": "cpu"})
        assert denied.status_code == 403
        assert denied.json()["error"]["type"] == "permission_error"
        assert peer.delete("/v1/models/small").status_code == 403
    with hive.client() as queen:
        assert queen.get("/v1/worker-binaries").json() == []
        assert [m["name"] for m in queen.get("/v1/models").json()] == ["small"]


def test_a_bearer_hive_refuses_a_missing_or_wrong_token(start_hive: HiveFactory) -> None:
    """A hive started by hand (no identity) takes RBEE_TOKEN on every route but /health."""
    hive = start_hive(tls=False)
    wrong = {"authorization": "Bearer not-the-token"}
    with (
        httpx.Client(base_url=hive.url, timeout=10) as anonymous,
        httpx.Client(base_url=hive.url, headers=wrong, timeout=10) as guessing,
        hive.client() as trusted,
    ):
        assert anonymous.get("/health").status_code == 200
        for client in (anonymous, guessing):
            denied = client.get("/v1/capabilities")
            assert denied.status_code == 401
            assert denied.json()["error"]["type"] == "authentication_error"
            assert client.get("/v1/worker-processes").status_code == 401
        assert trusted.headers["authorization"] == f"Bearer {TOKEN}"
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


def test_only_the_queen_starts_lists_or_stops_a_hives_rpc_server(hive: Hive) -> None:
    """The routes that lend this hive's devices (`/v1/rpc-servers`): a worker (the one that
    would span it, say), another hive and a cross-site page are refused; the queen is
    answered (no RPC server runs; an unprovisioned worker binary is a 404)."""
    page = {"content-type": "text/plain", "origin": "http://evil.example"}
    with hive.client("worker", "gpu1.llama.0") as worker, hive.client("hive", "peer") as peer:
        for client in (worker, peer):
            assert client.get("/v1/rpc-servers").status_code == 403
            assert client.post("/v1/rpc-servers", json={}).status_code == 403
            assert client.delete("/v1/rpc-servers/1").status_code == 403
    with hive.client() as queen:
        crossed = queen.post("/v1/rpc-servers", content="{}", headers=page)
        assert crossed.status_code == 403 and crossed.json()["error"]["code"] == "cross_origin"
        assert queen.get("/v1/rpc-servers").json() == []
        missing = queen.post("/v1/rpc-servers", json={"worker_binary": "cpu"})
        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["code"] == "worker_binary_not_found"
        assert queen.delete("/v1/rpc-servers/1").status_code == 404
