"""Browsers cannot drive a daemon: a page the operator visits can neither call the queen, a
hive or a worker cross-site (a `text/plain` POST with a foreign Origin, which browsers send
without asking) nor rebind a name of its own to 127.0.0.1 (DNS rebinding: same-origin to the
browser, but the page's name is in `Host`).

The rule is one function, `browser_refusal`, checked here case by case, then on a real keyed
queen; tests/hive/test_cross_site.py tries the 2026-12 probe's findings on a real hive.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from rbee.daemon import Scope, browser_refusal, own_names
from tests.fixtures.scripted import ScriptedQueen

NAMES = own_names("gpu1.lan")


def _scope(method: str = "POST", path: str = "/v1/models", **headers: str) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


@pytest.mark.parametrize(
    "headers",
    [
        {"host": "127.0.0.1:7835", "content_type": "application/json"},  # rbee's own clients
        {"host": "127.0.0.1:7835", "content_type": "application/json; charset=utf-8"},
        {"host": "[::1]:7835", "content_type": "application/json"},
        {"host": "10.0.0.2:7835"},  # a POST with no body
        {"host": "localhost:7833", "origin": "http://localhost:7833"},  # the status page's own
        {"host": "gpu1.lan:7835", "content_type": "application/json"},  # the YAML's name
        {"host": "GPU1.LAN:7835"},
    ],
)
def test_what_rbees_clients_and_its_own_page_send_passes(headers: dict[str, str]) -> None:
    assert browser_refusal(_scope(**headers), NAMES) is None


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"host": "127.0.0.1:7835", "origin": "http://evil.example"}, 403, "cross_origin"),
        ({"host": "127.0.0.1:7835", "origin": "null"}, 403, "cross_origin"),
        ({"host": "127.0.0.1:7835", "origin": "http://127.0.0.1:8080"}, 403, "cross_origin"),
        ({"host": "evil.example:7835", "origin": "http://evil.example:7835"}, 400, "bad_host"),
        ({"host": "evil.example:7835"}, 400, "bad_host"),
        ({"host": "127.0.0.1:7835", "content_type": "text/plain"}, 415, "unsupported_media"),
        (
            {"host": "127.0.0.1:7835", "content_type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media",
        ),
        ({"host": "127.0.0.1:7835", "content_type": "multipart/form-data; b=x"}, 415, None),
    ],
)
def test_what_only_a_web_page_sends_is_refused(
    headers: dict[str, str], status: int, code: str | None
) -> None:
    refusal = browser_refusal(_scope(**headers), NAMES)
    assert refusal is not None and refusal[0] == status
    assert code is None or refusal[2] == code


def test_a_form_is_taken_where_a_form_is_expected_only() -> None:
    form = {"host": "127.0.0.1:7833", "content_type": "application/x-www-form-urlencoded"}
    assert (
        browser_refusal(
            _scope(path="/ui/login", **form), NAMES, form_paths=frozenset({"/ui/login"})
        )
        is None
    )
    assert browser_refusal(
        _scope(path="/v1/keys", **form), NAMES, form_paths=frozenset({"/ui/login"})
    )


def test_a_keyed_queen_refuses_a_cross_site_post_before_reading_its_credential(
    tmp_path: Path,
) -> None:
    queen = ScriptedQueen.start(tmp_path, token="cluster-secret")
    try:
        operator = {"authorization": "Bearer cluster-secret"}
        cross = httpx.post(
            f"{queen.url}/v1/keys",
            content='{"name": "mine", "scope": "admin"}',
            headers={**operator, "content-type": "text/plain", "origin": "http://evil.example"},
        )
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "cross_origin"
        plain = httpx.post(
            f"{queen.url}/v1/keys",
            content='{"name": "mine", "scope": "admin"}',
            headers={**operator, "content-type": "text/plain"},
        )
        assert plain.status_code == 415 and "application/json" in plain.json()["error"]["message"]
        assert httpx.get(f"{queen.url}/v1/keys", headers=operator).json() == []
        assert httpx.get(f"{queen.url}/health").status_code == 200  # rbee's own clients pass
        # The status page's own forms are taken from its own pages only.
        page = {"content-type": "application/x-www-form-urlencoded"}
        for path, answered in (("/ui/login", 401), ("/ui/logout", 303)):
            foreign = {**page, "origin": "http://e.x"}
            assert (
                httpx.post(f"{queen.url}{path}", content="key=x", headers=foreign).status_code
                == 403
            )
            own = {**page, "origin": queen.url}
            assert (
                httpx.post(f"{queen.url}{path}", content="key=x", headers=own).status_code
                == answered
            )
    finally:
        queen.stop()
