"""A worker with its TLS identity (as a hive of the queen starts it): it serves mutual TLS to the
queen's certificate only, and heartbeats only to a server holding the queen's certificate, so a
process squatting on the queen's address while the queen is down learns nothing."""

from __future__ import annotations

import contextlib
import json
import ssl
import time
from pathlib import Path

import httpx
import pytest

from rbee.pki import Authority, server_context, write_private
from tests.fixtures.pki import authority, client_tls, identity, server_tls
from tests.fixtures.probe import probe
from tests.worker.conftest import Worker, launch_worker, wait_until


def _worker(queen_url: str, gguf: Path, directory: Path) -> Worker:
    bundle = identity("worker", "test-hive/tls-worker")
    return launch_worker(queen_url, gguf, directory, "--identity", str(bundle), token=None)


def test_a_squatter_on_the_queens_address_gets_no_heartbeat(gguf: Path, tmp_path: Path) -> None:
    """A server with a certificate of another CA (or none) is where the queen was: the worker
    connects, finds it is not the queen, and sends nothing; the real queen's certificate
    gets the heartbeat."""
    foreign = write_private(
        tmp_path / "squatter.pem",
        Authority(tmp_path / "other-ca").issue("queen", "queen", ["127.0.0.1"]),
    )
    with probe(server_context(foreign, require_client=False)) as squatter:
        worker = _worker(squatter.url, gguf, tmp_path)
        try:
            wait_until(lambda: squatter.connections >= 2, 30, "two heartbeat attempts")
            assert squatter.received == b""
        finally:
            worker.stop()
    with probe(server_tls("queen", "queen")) as queen:
        worker = _worker(queen.url, gguf, tmp_path)
        try:
            wait_until(lambda: b"/v1/workers/heartbeat" in queen.received, 30, "a heartbeat")
        finally:
            worker.stop()


def test_only_the_queens_certificate_may_call_the_worker(gguf: Path, tmp_path: Path) -> None:
    worker = _worker("https://127.0.0.1:9", gguf, tmp_path)
    url = f"https://127.0.0.1:{worker.port}"
    try:
        queen = httpx.Client(verify=client_tls("queen", "queen"), timeout=5)

        def up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return queen.get(f"{url}/health").status_code == 200
            return False

        wait_until(up, 30, "the worker over TLS")
        body = {"prompt": "The bee", "max_tokens": 2}
        deadline = time.monotonic() + 30
        while (answer := queen.post(f"{url}/v1/completions", json=body)).status_code == 503:
            assert time.monotonic() < deadline, "the worker never loaded"
            time.sleep(0.2)
        assert answer.status_code == 200, answer.text
        # Another role of the same CA is refused; no certificate at all never gets an answer.
        renewal = {"bundle": identity("worker", "test-hive/tls-worker").read_text()}
        with httpx.Client(verify=client_tls("hive", "test-hive"), timeout=5) as hive:
            assert hive.post(f"{url}/v1/completions", json=body).status_code == 403
            assert hive.put(f"{url}/v1/identity", json=renewal).status_code == 403
        cross = queen.put(
            f"{url}/v1/identity",
            content=json.dumps(renewal),
            headers={"content-type": "text/plain", "origin": "https://evil.example"},
        )
        assert cross.status_code in (403, 415), cross.text
        anonymous = ssl.create_default_context()
        anonymous.load_verify_locations(identity("queen", "queen"))
        anonymous.check_hostname = False
        with pytest.raises(httpx.HTTPError), httpx.Client(verify=anonymous, timeout=5) as bare:
            bare.post(f"{url}/v1/completions", json=body)
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"http://127.0.0.1:{worker.port}/v1/completions", json=body, timeout=5)
        # The queen renews the worker's identity in place; its heartbeats say until when.
        before = queen.get(f"{url}/health").json()["tls_expires_at"]
        renewed = authority().issue("worker", "test-hive/tls-worker", ["127.0.0.1"], days=30)
        answer = queen.put(f"{url}/v1/identity", json={"bundle": renewed.decode()})
        assert answer.status_code == 200, answer.text
        assert answer.json()["tls_expires_at"] > before + 20 * 86400
        assert (
            queen.get(f"{url}/health").json()["tls_expires_at"] == answer.json()["tls_expires_at"]
        )
    finally:
        queen.close()
        worker.stop()
