"""The queen's status page: hives, workers, queues and recent jobs, live.

`GET /` is one HTML page (inline CSS and a few lines of plain JS: no build step, nothing
fetched from anywhere but this queen); `GET /ui/events` pushes the status (`snapshot`) as a
Server-Sent Event every second, which the page renders. A browser cannot send a bearer header,
so `GET/POST /ui/login` takes the admin key once and opens a session whose id an HttpOnly,
SameSite=Strict cookie holds, which `front` accepts on `/` and `/ui/*` only.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

import rbee
from rbee.queen.http.front import UI_COOKIE, ui_session
from rbee.queen.http.sessions import TTL_S as SESSION_TTL_S
from rbee.queen.http.state import QueenState, queen_of
from rbee.wire import sse

if TYPE_CHECKING:
    from rbee.wire import Capabilities

__all__ = ["events", "login", "login_form", "logout", "page", "recent_jobs", "snapshot"]

#: How often `/ui/events` pushes the status.
EVERY_S = 1.0
_JOB_FIELDS = {"job_id", "model", "priority", "state", "worker"}


def snapshot(queen: QueenState) -> dict[str, Any]:
    """What the page shows, as JSON: hives, live workers, queue depth per model, recent jobs."""
    registry = queen.registry
    now = time.time()
    hives = [
        {
            "name": record.name,
            "mode": record.mode,
            "state": record.state,
            "url": record.url,
            "version": record.version,
            "checked_s": None if record.checked_at is None else round(now - record.checked_at),
            "devices": _devices(record.capabilities),
            "error": record.error,
        }
        for record in queen.hive_registry.records()
    ]
    workers: list[dict[str, Any]] = []
    for record in sorted(registry.live(), key=lambda r: r.beat.worker_id):
        view = registry.view(record)
        workers.append(
            {
                "id": view.worker_id,
                "model": view.model,
                "hive": view.hive,
                "state": view.state,
                "slots_busy": max(view.in_flight, view.slots_busy),
                "slots_total": view.slots_total,
                "device": view.device,
                # Since its first heartbeat to this queen.
                "uptime_s": round(view.last_seen_s + record.last_seen - record.since),
                "unhealthy": view.unhealthy_reason,
            }
        )
    depths = queen.admission.depths()
    queues = [
        {
            "model": model,
            "waiting": depths.get(model, 0),
            "workers": sum(w["model"] == model for w in workers),
            "slots_busy": sum(w["slots_busy"] for w in workers if w["model"] == model),
            "slots_total": sum(w["slots_total"] for w in workers if w["model"] == model),
        }
        for model in sorted({w["model"] for w in workers} | set(depths))
    ]
    sync = queen.healer.sync
    return {
        "queen": {"url": queen.control.public_url, "version": rbee.__version__},
        "sync": {"state": sync.state, "reasons": sync.reasons},
        "hives": hives,
        "workers": workers,
        "queues": queues,
        "jobs": recent_jobs(queen),
    }


def recent_jobs(queen: QueenState, limit: int = 10) -> list[dict[str, Any]]:
    """The newest jobs (`/v1/jobs`), newest first."""
    now = time.time()
    return [
        {
            **record.model_dump(mode="json", include=_JOB_FIELDS),
            "age_s": round(now - record.created_at),
        }
        for record in queen.jobs.recent(limit=limit)
    ]


def _devices(capabilities: Capabilities | None) -> str:
    if capabilities is None:
        return ""
    gpus = [f"cuda:{gpu.index} {gpu.name}" for gpu in capabilities.gpus]
    return ", ".join([f"{capabilities.cpu_count} CPUs", *gpus])


async def page(request: Request) -> Response:
    """`GET /`: the status page, with the status of now in it (the stream brings the rest)."""
    queen = queen_of(request)
    nonce = secrets.token_urlsafe(16)
    # JSON inside <script>: no `</script>` can close it early.
    initial = json.dumps(snapshot(queen)).replace("<", "\\u003c")
    body = _PAGE.replace("__NONCE__", nonce).replace("__INITIAL__", initial)
    return HTMLResponse(body, headers=_headers(nonce))


async def events(request: Request) -> Response:
    """`GET /ui/events`: the status every `EVERY_S` seconds, until the page goes."""
    queen = queen_of(request)

    async def stream() -> AsyncIterator[bytes]:
        while True:
            yield sse.json_event(snapshot(queen))
            await asyncio.sleep(EVERY_S)

    return StreamingResponse(stream(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)


async def login_form(request: Request) -> Response:
    """`GET /ui/login`: the form that asks for an admin key."""
    return _login_page(None, 200)


async def login(request: Request) -> Response:
    """`POST /ui/login` (a form with `key`): an admin key (or the cluster token) opens a
    session, whose id the cookie holds, and goes to the page; anything else gets the form
    again, saying why. Wrong keys from one address are throttled (`rbee.queen.http.sessions`)."""
    queen = queen_of(request)
    client = request.client.host if request.client else "?"
    wait_s = queen.sessions.wait_s(client)
    if wait_s > 0:
        retry = str(math.ceil(wait_s))
        answer = _login_page(f"too many wrong keys: try again in {retry} s", 429)
        answer.headers["retry-after"] = retry
        return answer
    fields = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (fields.get("key") or [""])[0].strip()
    found = queen.auth.check(key) if key else 401
    if isinstance(found, int):
        queen.sessions.failed(client)
        if found == 403:
            message = "an inference or plan key cannot open the status page: use an admin key"
            return _login_page(message, 403)
        return _login_page("that key is not an admin key of this queen", 401)
    queen.sessions.succeeded(client)
    answer = RedirectResponse("/", status_code=303)
    answer.set_cookie(
        UI_COOKIE,
        queen.sessions.open(key),
        max_age=int(SESSION_TTL_S),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return answer


async def logout(request: Request) -> Response:
    """`POST /ui/logout`: the session ends here and in the browser; back to the login form."""
    session_id = ui_session(request.headers.get("cookie", "").encode("latin-1"))
    if session_id is not None:
        queen_of(request).sessions.close(session_id)
    answer = RedirectResponse("/ui/login", status_code=303)
    answer.delete_cookie(UI_COOKIE, httponly=True, samesite="strict")
    return answer


def _login_page(problem: str | None, status: int) -> Response:
    nonce = secrets.token_urlsafe(16)
    said = f'<p class="problem" role="alert">{html.escape(problem)}</p>' if problem else ""
    body = _LOGIN.replace("__NONCE__", nonce).replace("__PROBLEM__", said)
    return HTMLResponse(body, status_code=status, headers=_headers(nonce))


def _headers(nonce: str) -> dict[str, str]:
    """Only this page's own inline script and style run; it connects to this queen only."""
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "content-security-policy": policy,
        "cache-control": "no-store",
        "x-content-type-options": "nosniff",
        # Not no-referrer: with it a browser sends `Origin: null` on the page's own forms,
        # which the front door must refuse (a page elsewhere can send that too).
        "referrer-policy": "same-origin",
    }


_STYLE = """
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700;
  --line: #d0d7de88; --muted: #6e7781; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; }
header { display: flex; gap: 1rem; align-items: baseline; padding: .6rem 1.2rem;
  border-bottom: 1px solid var(--line); }
header h1 { font-size: 1.1rem; margin: 0; }
main { max-width: 1340px; margin: 0 auto; padding: .4rem 1.2rem 1rem; }
section { margin-top: .8rem; }
h2 { font-size: .95rem; margin: 0 0 .3rem; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: .22rem .5rem; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th { font-weight: 600; color: var(--muted); font-size: .8rem; text-transform: uppercase; }
td.wrap { white-space: normal; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 1.2rem; }
.muted, .empty { color: var(--muted); }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.state-online, .state-idle, .state-in_sync, .live { color: var(--ok); }
.state-offline, .state-degraded, .state-failed, .dead, .problem { color: var(--bad); }
.state-busy, .state-loading, .state-draining, .state-healing, .state-queued,
.state-running { color: var(--warn); }
code { font-size: .85rem; }
"""

_PAGE = (
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rbee status</title>
<style nonce="__NONCE__">"""
    + _STYLE
    + """</style>
</head>
<body>
<header>
  <h1>rbee</h1>
  <span>queen <code id="queen"></code></span>
  <span>sync <b id="sync"></b></span>
  <span id="link" class="muted">connecting…</span>
  <form method="post" action="/ui/logout"><button type="submit">log out</button></form>
</header>
<main>
  <section>
    <h2>Hives</h2>
    <table id="hives"><thead><tr><th>name</th><th>mode</th><th>state</th><th>url</th>
      <th>version</th><th>devices</th><th class="num">checked</th><th>error</th></tr></thead>
      <tbody></tbody></table>
  </section>
  <section>
    <h2>Workers</h2>
    <table id="workers"><thead><tr><th>id</th><th>model</th><th>hive</th><th>state</th>
      <th class="num">slots busy/total</th><th>device</th><th class="num">uptime</th>
      <th>health</th></tr></thead><tbody></tbody></table>
  </section>
  <div class="cols">
    <section>
      <h2>Queues</h2>
      <table id="queues"><thead><tr><th>model</th><th class="num">waiting</th>
        <th class="num">workers</th><th class="num">slots busy/total</th></tr></thead>
        <tbody></tbody></table>
    </section>
    <section>
      <h2>Recent jobs</h2>
      <table id="jobs"><thead><tr><th>job</th><th>model</th><th>priority</th><th>state</th>
        <th>worker</th><th class="num">age</th></tr></thead><tbody></tbody></table>
    </section>
  </div>
</main>
<script id="initial" type="application/json">__INITIAL__</script>
<script nonce="__NONCE__">
"use strict";
const $ = (id) => document.getElementById(id);
function ago(s) {
  if (s === null || s === undefined) return "";
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}
function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}
function fill(id, rows, empty, columns) {
  const body = $(id).tBodies[0];
  const trs = rows.map((row) => {
    const tr = document.createElement("tr");
    for (const td of row) tr.appendChild(td);
    return tr;
  });
  if (!trs.length) {
    const tr = document.createElement("tr");
    const td = cell(empty, "empty");
    td.colSpan = columns;
    tr.appendChild(td);
    trs.push(tr);
  }
  body.replaceChildren(...trs);
}
function render(s) {
  $("queen").textContent = s.queen.url + " (v" + s.queen.version + ")";
  const sync = $("sync");
  sync.textContent = s.sync.state.replace("_", " ");
  sync.className = "state-" + s.sync.state;
  sync.title = s.sync.reasons.join("\\n");
  fill("hives", s.hives.map((h) => [
    cell(h.name), cell(h.mode), cell(h.state, "state-" + h.state), cell(h.url),
    cell(h.version), cell(h.devices), cell(ago(h.checked_s), "num"),
    cell(h.error, "wrap problem"),
  ]), "no hives registered: run rbee apply", 8);
  fill("workers", s.workers.map((w) => [
    cell(w.id), cell(w.model), cell(w.hive), cell(w.state, "state-" + w.state),
    cell(w.slots_busy + "/" + w.slots_total, "num"), cell(w.device),
    cell(ago(w.uptime_s), "num"),
    w.unhealthy ? cell("unhealthy: " + w.unhealthy, "wrap problem") : cell("ok", "live"),
  ]), "no live workers", 8);
  fill("queues", s.queues.map((q) => [
    cell(q.model), cell(q.waiting, "num"), cell(q.workers, "num"),
    cell(q.slots_busy + "/" + q.slots_total, "num"),
  ]), "no models served", 4);
  fill("jobs", s.jobs.map((j) => [
    cell(j.job_id), cell(j.model), cell(j.priority), cell(j.state, "state-" + j.state),
    cell(j.worker), cell(ago(j.age_s), "num"),
  ]), "no jobs yet (POST /v1/jobs)", 6);
  $("link").textContent = "live · " + new Date().toLocaleTimeString();
  $("link").className = "live";
}
render(JSON.parse($("initial").textContent));
const events = new EventSource("/ui/events");
events.onmessage = (e) => render(JSON.parse(e.data));
events.onerror = () => {
  $("link").textContent = events.readyState === EventSource.CLOSED
    ? "disconnected: reload the page" : "reconnecting…";
  $("link").className = "dead";
};
</script>
</body>
</html>
"""
)

_LOGIN = (
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rbee status: log in</title>
<style nonce="__NONCE__">"""
    + _STYLE
    + """
form { max-width: 28rem; margin: 4rem auto; display: grid; gap: .6rem; }
input { font: inherit; padding: .4rem; }
button { font: inherit; padding: .4rem; cursor: pointer; }
</style>
</head>
<body>
<form method="post" action="/ui/login">
  <h1>rbee status</h1>
  <label for="key">Admin key of this queen (or the cluster token)</label>
  <input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
  __PROBLEM__
  <button type="submit">Log in</button>
  <p class="muted">Make one with <code>rbee key create NAME --scope admin</code>.</p>
</form>
</body>
</html>
"""
)
