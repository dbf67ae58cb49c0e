"""A page the operator visits cannot drive a token-less hive (the 2026-12 probe's critical
findings: a cross-site `text/plain` POST made the hive run any executable and hand out any
file), neither cross-site nor by rebinding a name of its own to the hive's address."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.hive.conftest import HiveFactory


def test_a_cross_site_page_cannot_make_a_tokenless_hive_run_a_file_or_hand_one_out(
    start_hive: HiveFactory, tmp_path: Path
) -> None:
    hive = start_hive()
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
    with httpx.Client(base_url=hive.url, timeout=10) as client:
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
