"""https:// models: a local TLS server whose certificate comes from a CA made for the test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from rbee.catalog import ArtifactCatalog, ChecksumMismatchError
from rbee.errors import NotFoundError, RbeeError
from tests.fixtures.hub import FakeHub, HubFile, fake_hub


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeHub, HubFile, str]]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    blob = tmp_path / "model.gguf"
    blob.write_bytes(os.urandom(2 << 20))
    for hub in fake_hub(tls=(chain, key)):
        served = hub.add("org/repo", "model.gguf", blob)
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # how a hive trusts a private CA
        yield hub, served, f"{hub.cdn_url}/cdn/{served.sha256}"


def test_a_url_with_its_sha256_is_downloaded_over_tls(
    server: tuple[FakeHub, HubFile, str], tmp_path: Path
) -> None:
    _, served, url = server
    entry = ArtifactCatalog(tmp_path / "models").add("m", url, served.sha256)
    assert entry.sha256 == served.sha256
    assert Path(entry.path).read_bytes() == served.path.read_bytes()


def test_an_interrupted_download_resumes_with_a_range(
    server: tuple[FakeHub, HubFile, str], tmp_path: Path
) -> None:
    hub, served, url = server
    hub.drop_after = served.size // 3
    ArtifactCatalog(tmp_path / "models").add("m", url, served.sha256)
    assert hub.sent == served.size


def test_a_certificate_nobody_vouched_for_is_refused(
    server: tuple[FakeHub, HubFile, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, served, url = server
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(RbeeError, match="TLS certificate is not trusted") as refused:
        ArtifactCatalog(tmp_path / "models").add("m", url, served.sha256)
    assert not refused.value.transient  # no retry fixes a certificate
    assert refused.value.hint is not None and "SSL_CERT_FILE" in refused.value.hint


def test_a_404_and_a_wrong_sha256_are_clear_and_leave_nothing(
    server: tuple[FakeHub, HubFile, str], tmp_path: Path
) -> None:
    _, served, url = server
    catalog = ArtifactCatalog(tmp_path / "models")
    with pytest.raises(NotFoundError, match="not found"):
        catalog.add("m", url.replace(served.sha256, "0" * 64), served.sha256)
    with pytest.raises(ChecksumMismatchError, match="sha256 mismatch"):
        catalog.add("m", url, "1" * 64)
    assert catalog.list() == []
    assert list(catalog.root.iterdir()) == []
