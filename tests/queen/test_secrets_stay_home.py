"""The queen sends nothing secret to an address that is not one of its own hives: an admin key
that plans a cluster naming a hive at an address it controls learns no credential.

Before mutual TLS the queen called every hive it planned with `Authorization: Bearer <cluster
token>`; now it calls hives over TLS, presents its own certificate and sends no token, and a
server without a hive certificate of the cluster's CA never gets past the handshake.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from rbee.pki import Authority, server_context, write_private
from tests.fixtures.pki import server_tls
from tests.fixtures.probe import Probe, probe
from tests.fixtures.scripted import ScriptedQueen


def _plan_a_hive_at(queen: ScriptedQueen, key: str, stranger: Probe) -> httpx.Response:
    cluster = {
        "version": 1,
        "queen": {"url": queen.url},
        "hives": [{"name": "mine", "host": "127.0.0.1", "port": stranger.port}],
    }
    return httpx.post(
        f"{queen.url}/v1/plan",
        json={"cluster": cluster},
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


def test_an_admin_key_planning_its_own_address_as_a_hive_gets_no_credential(
    tmp_path: Path,
) -> None:
    queen = ScriptedQueen.start(tmp_path / "queen")
    try:
        created = httpx.post(
            f"{queen.url}/v1/keys",
            json={"name": "ci", "scope": "admin"},
            headers=queen.headers,
            timeout=10,
        )
        key = created.json()["key"]
        foreign = write_private(
            tmp_path / "fake-hive.pem",
            Authority(tmp_path / "other-ca").issue("hive", "mine", ["127.0.0.1"]),
        )
        # A raw listener sees what goes on the wire; one holding a certificate of another CA
        # (or the right CA but the wrong role: a worker's) sees what TLS would decrypt.
        for tls in (None, server_context(foreign, require_client=False), server_tls("worker", "x")):
            with probe(tls) as stranger:
                planned = _plan_a_hive_at(queen, key, stranger)
                assert planned.status_code == 200, planned.text
            assert stranger.connections >= 1  # the queen did try to observe it
            for secret in (queen.token.encode(), key.encode(), b"authorization", b"Bearer"):
                assert secret not in stranger.received
            if tls is None:
                assert stranger.received[:1] == b"\x16"  # a TLS handshake, nothing in clear
            else:
                assert stranger.received == b""
    finally:
        queen.stop()
