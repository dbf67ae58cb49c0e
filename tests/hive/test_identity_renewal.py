"""A hive's TLS identity is renewed in place: the queen puts a new bundle of the cluster's CA,
and every connection from then on meets the new certificate; nothing else may replace it."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from rbee.pki import Authority, Identity, due, write_private
from tests.fixtures.pki import authority, client_tls, identity
from tests.hive.conftest import Hive, HiveFactory


def _serial_seen(hive: Hive) -> int:
    """The serial number of the certificate a new TLS connection to the hive meets."""
    context = client_tls("queen", "queen")
    with (
        socket.create_connection(("127.0.0.1", hive.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _bundle(days: float, name: str) -> bytes:
    return authority().issue("hive", name, ["127.0.0.1"], days=days)


def test_the_queen_renews_a_hives_identity_in_place(start_hive: HiveFactory) -> None:
    hive = start_hive()
    before = _serial_seen(hive)
    with hive.client() as queen:
        health = queen.get("/health").json()
        assert health["tls_expires_at"] > time.time()
        renewed = queen.put("/v1/identity", json={"bundle": _bundle(20, hive.name).decode()})
        assert renewed.status_code == 200, renewed.text
        assert renewed.json()["tls_expires_at"] > health["tls_expires_at"] + 12 * 86400
        assert queen.get("/health").json()["tls_expires_at"] == renewed.json()["tls_expires_at"]
    after = _serial_seen(hive)
    assert after != before
    # The file holds it too: a restarted hive starts with the renewed identity.
    on_disk = x509.load_pem_x509_certificate(identity("hive", hive.name).read_bytes())
    assert on_disk.serial_number == after


def test_only_the_queen_renews_and_only_with_the_clusters_ca(
    start_hive: HiveFactory, tmp_path: Path
) -> None:
    hive = start_hive()
    before = _serial_seen(hive)
    foreign = Authority(tmp_path / "other-ca").issue("hive", hive.name, ["127.0.0.1"])
    with hive.client() as queen:
        refused = queen.put("/v1/identity", json={"bundle": foreign.decode()})
        assert refused.status_code == 422
        assert "CA" in refused.text
        assert queen.put("/v1/identity", json={"bundle": "not a pem"}).status_code == 422
    bundle = _bundle(20, hive.name).decode()
    with hive.client("hive", "a-peer") as peer:
        assert peer.put("/v1/identity", json={"bundle": bundle}).status_code == 403
    # Without a certificate nothing is answered; as a page would send it, it is refused.
    anonymous = ssl.create_default_context(cadata=authority().ca_pem.decode())
    anonymous.check_hostname = False
    with pytest.raises(httpx.TransportError), httpx.Client(verify=anonymous, timeout=5) as bare:
        bare.put(f"{hive.url}/v1/identity", json={"bundle": bundle})
    with hive.client() as queen:
        cross = queen.put(
            "/v1/identity",
            content=json.dumps({"bundle": bundle}),
            headers={"content-type": "text/plain", "origin": "https://evil.example"},
        )
        assert cross.status_code in (403, 415), cross.text
    assert _serial_seen(hive) == before


def test_a_certificate_is_due_in_the_last_third_of_its_life(tmp_path: Path) -> None:
    path = write_private(tmp_path / "id.pem", _bundle(7, "h"))
    identity = Identity(path)
    now = time.time()
    assert not due(identity.expires_at, now)
    assert not due(identity.expires_at, now + 4.5 * 86400)
    assert due(identity.expires_at, now + 5 * 86400)
    assert identity.server.verify_mode == ssl.CERT_REQUIRED
