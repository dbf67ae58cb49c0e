"""Who may see the status page: a queen sends a browser to its login form, which takes admin
keys (and the cluster token) only; the cookie it sets opens the page and nothing else.

The queen's app in this process (`tests.fixtures.in_process_queen`); the worker it lists is a
heartbeat, nothing serves it (the page only shows it). The page in a real browser is
tests/e2e/test_status_page.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.fixtures.in_process_queen import InProcessQueen, in_process_queen
from tests.fixtures.scripted import MODEL

TOKEN = "cluster-secret"


@dataclass
class KeyedQueen:
    queen: InProcessQueen
    admin: str
    inference: str

    @property
    def client(self) -> TestClient:
        return self.queen.client


@pytest.fixture
def queen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessQueen]:
    with in_process_queen(tmp_path, monkeypatch, TOKEN) as queen:
        yield queen


@pytest.fixture
def keyed(queen: InProcessQueen) -> KeyedQueen:
    keys = [queen.key(scope, scope) for scope in ("admin", "inference")]
    queen.add_worker("local.scripted.0", "https://127.0.0.1:9", slots=3)
    return KeyedQueen(queen, *keys)


def _login(client: httpx.Client, key: str) -> httpx.Response:
    return client.post("/ui/login", data={"key": key})


def test_a_browser_without_the_cookie_is_sent_to_the_login_form(keyed: KeyedQueen) -> None:
    page = keyed.client.get("/")
    assert (page.status_code, page.headers["location"]) == (303, "/ui/login")
    form = keyed.client.get("/ui/login")
    assert form.status_code == 200
    assert '<form method="post" action="/ui/login">' in form.text
    events = keyed.client.get("/ui/events")
    assert events.status_code == 401
    assert events.json()["error"]["type"] == "authentication_error"


def test_a_wrong_key_and_an_inference_key_are_refused_at_login(keyed: KeyedQueen) -> None:
    wrong = _login(keyed.client, "rbee_not-a-key")
    assert wrong.status_code == 401 and "not an admin key of this queen" in wrong.text
    inference = _login(keyed.client, keyed.inference)
    assert inference.status_code == 403
    assert "an inference or plan key cannot open the status page" in inference.text
    assert "set-cookie" not in wrong.headers and "set-cookie" not in inference.headers
    # Neither is the inference key let in as a cookie it set itself.
    keyed.client.cookies.set("rbee_ui", keyed.inference)
    assert keyed.client.get("/").status_code == 303


@pytest.mark.parametrize("who", ["admin key", "cluster token"])
def test_an_admin_logs_in_and_the_cookie_opens_the_page_only(keyed: KeyedQueen, who: str) -> None:
    key = keyed.admin if who == "admin key" else TOKEN
    with keyed.queen.browser() as browser:
        login = browser.post("/ui/login", data={"key": key})
        assert (login.status_code, login.headers["location"]) == (303, "/")
        cookie = login.headers["set-cookie"].lower()
        assert cookie.startswith("rbee_ui=") and "httponly" in cookie
        assert "samesite=strict" in cookie and "path=/" in cookie
        page = browser.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        with browser.stream("GET", "/ui/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            first = next(line for line in events.iter_lines() if line.startswith("data: "))
        status = json.loads(first.removeprefix("data: "))
        [worker] = status["workers"]
        assert (worker["id"], worker["model"], worker["hive"]) == (
            "local.scripted.0",
            MODEL,
            "local",
        )
        assert (worker["slots_busy"], worker["slots_total"], worker["device"]) == (0, 3, "cpu")
        assert status["queues"] == [
            {"model": MODEL, "waiting": 0, "workers": 1, "slots_busy": 0, "slots_total": 3}
        ]
        # The cookie is the page's: the API still wants a bearer header.
        assert browser.get("/v1/status").status_code == 401
        assert browser.get("/v1/logs/queen").status_code == 401


def test_a_loopback_queen_without_keys_shows_the_page_to_no_one_without_a_login(
    queen: InProcessQueen,
) -> None:
    """No open mode: on loopback, without a key made yet, the page still wants a login, and
    the cluster token is what opens it."""
    page = queen.client.get("/")
    events = queen.client.get("/ui/events")
    with queen.browser() as browser:
        login = browser.post("/ui/login", data={"key": queen.token})
        opened = browser.get("/")
    assert (page.status_code, page.headers["location"]) == (303, "/ui/login")
    assert events.status_code == 401
    assert (login.status_code, login.headers["location"]) == (303, "/")
    assert opened.status_code == 200
    assert "<title>rbee status</title>" in opened.text


def test_the_cookie_holds_a_session_id_that_logout_and_revoking_the_key_close(
    keyed: KeyedQueen,
) -> None:
    operator = {"authorization": f"Bearer {TOKEN}"}
    with keyed.queen.browser() as browser:
        login = browser.post("/ui/login", data={"key": keyed.admin})
        session = browser.cookies["rbee_ui"]
        assert keyed.admin not in login.headers["set-cookie"] and len(session) >= 40
        assert "max-age=43200" in login.headers["set-cookie"].lower()
        assert browser.get("/").status_code == 200
        out = browser.post("/ui/logout")
        assert (out.status_code, out.headers["location"]) == (303, "/ui/login")
        assert browser.get("/").status_code == 303  # the browser forgot it...
    with keyed.queen.browser() as thief:
        thief.cookies.set("rbee_ui", session)
        assert thief.get("/").status_code == 303  # ...and so did the queen
    with keyed.queen.browser() as browser:
        browser.post("/ui/login", data={"key": keyed.admin})
        assert browser.get("/").status_code == 200
        revoked = keyed.client.delete("/v1/keys/admin", headers=operator)
        assert revoked.status_code == 200, revoked.text
        assert browser.get("/").status_code == 303


def test_wrong_keys_are_throttled_per_address(keyed: KeyedQueen) -> None:
    for _ in range(5):
        assert _login(keyed.client, "rbee_wrong").status_code == 401
    throttled = _login(keyed.client, keyed.admin)  # even the right key waits its turn
    assert throttled.status_code == 429 and "too many wrong keys" in throttled.text
    assert int(throttled.headers["retry-after"]) >= 1
