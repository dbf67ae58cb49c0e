"""A page the operator visits cannot drive a hive (the 2026-12 probe's critical findings: a
cross-site `text/plain` POST made a token-less hive run any executable and hand out any file),
neither cross-site nor by rebinding a name of its own to the hive's address, even from a
browser that holds the queen's client certificate and would present it (or, for a hive
started by hand, a page that somehow sent its token)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hive.conftest import HiveFactory


@pytest.mark.parametrize("tls", [True, False], ids=["mtls", "bearer"])
def test_a_cross_site_page_cannot_make_a_hive_run_a_file_or_hand_one_out(
    start_hive: HiveFactory, tmp_path: Path, tls: bool
) -> None:
    hive = start_hive(tls=tls)
    marker = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    secret = tmp_path / "secret"
    secret.write_text("the operator's secret")
    page = {"content-type": "text/plain", "origin": "http://evil.example"}
    attempts = [
        ("/v1/worker-binaries", f'{{"name": "x", "path": "{script}"}}'),
        ("/v1/models", f'{{"name": "loot", "source": "file://{secret}"}}'),
    ]
    with hive.client() as client:  # holding the queen's certificate (or the token)
        for path, body in attempts:
            answer = client.post(path, content=body, headers=page)
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"]["code"] == "cross_origin"
            # Rebound: the page's own name in Host, and (to the browser) no foreign Origin.
            rebound = {"content-type": "application/json", "host": f"evil.example:{hive.port}"}
            answer = client.post(path, content=body, headers=rebound)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_host"
        assert client.get("/v1/models").json() == []
        assert client.get("/v1/worker-binaries").json() == []
    assert not marker.exists()
