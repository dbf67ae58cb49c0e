"""Who may see the status page: a queen sends a browser to its login form, which takes admin
keys (and the cluster token) only; the cookie it sets opens the page and nothing else.

A real queen process; the worker it lists is a heartbeat, nothing serves it (the page only
shows it). The page in a real browser is tests/e2e/test_status_page.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fixtures.scripted import MODEL, ScriptedQueen

TOKEN = "cluster-secret"


@dataclass
class KeyedQueen:
    queen: ScriptedQueen
    admin: str
    inference: str

    @property
    def url(self) -> str:
        return self.queen.url


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[KeyedQueen]:
    queen = ScriptedQueen.start(tmp_path, token=TOKEN)
    operator = {"authorization": f"Bearer {TOKEN}"}
    keys = [
        httpx.post(
            f"{queen.url}/v1/keys", json={"name": scope, "scope": scope}, headers=operator
        ).json()["key"]
        for scope in ("admin", "inference")
    ]
    queen.add_worker("local.scripted.0", "https://127.0.0.1:9", slots=3)
    yield KeyedQueen(queen, *keys)
    queen.stop()


def _login(url: str, key: str) -> httpx.Response:
    return httpx.post(f"{url}/ui/login", data={"key": key}, timeout=10)


def test_a_browser_without_the_cookie_is_sent_to_the_login_form(keyed: KeyedQueen) -> None:
    page = httpx.get(f"{keyed.url}/", timeout=10)
    assert (page.status_code, page.headers["location"]) == (303, "/ui/login")
    form = httpx.get(f"{keyed.url}/ui/login", timeout=10)
    assert form.status_code == 200
    assert '<form method="post" action="/ui/login">' in form.text
    events = httpx.get(f"{keyed.url}/ui/events", timeout=10)
    assert events.status_code == 401
    assert events.json()["error"]["type"] == "authentication_error"


def test_a_wrong_key_and_an_inference_key_are_refused_at_login(keyed: KeyedQueen) -> None:
    wrong = _login(keyed.url, "rbee_not-a-key")
    assert wrong.status_code == 401 and "not an admin key of this queen" in wrong.text
    inference = _login(keyed.url, keyed.inference)
    assert inference.status_code == 403
    assert "an inference or plan key cannot open the status page" in inference.text
    assert "set-cookie" not in wrong.headers and "set-cookie" not in inference.headers
    # Neither is the inference key let in as a cookie it set itself.
    cookies = {"rbee_ui": keyed.inference}
    assert httpx.get(f"{keyed.url}/", cookies=cookies, timeout=10).status_code == 303


@pytest.mark.parametrize("who", ["admin key", "cluster token"])
def test_an_admin_logs_in_and_the_cookie_opens_the_page_only(keyed: KeyedQueen, who: str) -> None:
    key = keyed.admin if who == "admin key" else TOKEN
    with httpx.Client(base_url=keyed.url, timeout=10) as browser:
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
    tmp_path: Path,
) -> None:
    """No open mode: on loopback, without a key made yet, the page still wants a login, and
    the cluster token is what opens it."""
    queen = ScriptedQueen.start(tmp_path)
    try:
        page = httpx.get(f"{queen.url}/", timeout=10)
        events = httpx.get(f"{queen.url}/ui/events", timeout=10)
        with httpx.Client(base_url=queen.url, timeout=10) as browser:
            login = browser.post("/ui/login", data={"key": queen.token})
            opened = browser.get("/")
    finally:
        queen.stop()
    assert (page.status_code, page.headers["location"]) == (303, "/ui/login")
    assert events.status_code == 401
    assert (login.status_code, login.headers["location"]) == (303, "/")
    assert opened.status_code == 200
    assert "<title>rbee status</title>" in opened.text


def test_the_cookie_holds_a_session_id_that_logout_and_revoking_the_key_close(
    keyed: KeyedQueen,
) -> None:
    operator = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=keyed.url, timeout=10) as browser:
        login = browser.post("/ui/login", data={"key": keyed.admin})
        session = browser.cookies["rbee_ui"]
        assert keyed.admin not in login.headers["set-cookie"] and len(session) >= 40
        assert "max-age=43200" in login.headers["set-cookie"].lower()
        assert browser.get("/").status_code == 200
        out = browser.post("/ui/logout")
        assert (out.status_code, out.headers["location"]) == (303, "/ui/login")
        assert browser.get("/").status_code == 303  # the browser forgot it...
    stolen = httpx.get(f"{keyed.url}/", cookies={"rbee_ui": session}, timeout=10)
    assert stolen.status_code == 303  # ...and so did the queen
    with httpx.Client(base_url=keyed.url, timeout=10) as browser:
        browser.post("/ui/login", data={"key": keyed.admin})
        assert browser.get("/").status_code == 200
        revoked = httpx.delete(f"{keyed.url}/v1/keys/admin", headers=operator, timeout=10)
        assert revoked.status_code == 200, revoked.text
        assert browser.get("/").status_code == 303


def test_wrong_keys_are_throttled_per_address(keyed: KeyedQueen) -> None:
    for _ in range(5):
        assert _login(keyed.url, "rbee_wrong").status_code == 401
    throttled = _login(keyed.url, keyed.admin)  # even the right key waits its turn
    assert throttled.status_code == 429 and "too many wrong keys" in throttled.text
    assert int(throttled.headers["retry-after"]) >= 1
