"""The queen's front door, in front of every route: request id, API keys, body size limit.

Raw ASGI, because every inference request passes through it: the inference routes go from
here straight to the relay, everything else on to Starlette.

Who may call what:
- `/health` is open.
- `/v1/chat/completions`, `/v1/completions`, `/v1/responses`, `/v1/embeddings`, `/v1/rerank`,
  `/v1/models`, and the jobs (`/v1/jobs*`): an inference or admin key.
- Planning and reading the control plane's state (`_PLAN_ROUTES`: plan, status, hives,
  workers, the lock, history): a plan or admin key. A plan key gets no inference, no logs (they
  may hold prompts) and no keys: it is for CI on pull requests.
- Everything else (apply, down, shutdown, locks, hive and worker changes, keys, metrics, logs,
  the status page): an admin key.
- The status page (`/` and `/ui/*`) also takes the `rbee_ui` cookie that its login form
  (`/ui/login`, open) sets: a browser cannot send a bearer header. The cookie holds a session
  id (`rbee.queen.http.sessions`), never the key; each use checks the key it was opened with
  again. `/` without a credential redirects to that form; `/ui/logout` (open) closes the session.
- The cluster token opens every route: it is the operator's credential (the YAML's
  `queen.token`, else the one rbee made on the queen's machine, `rbee.credentials`). There is
  no open mode: on loopback too, every route but those above needs a credential.
- Workers do not come here: they heartbeat to the cluster listener
  (`rbee.queen.app.cluster_app`), over mutual TLS.

Before any of that, what only a web page would send is refused (`rbee.daemon.browser_refusal`:
a foreign Origin, a Host that does not name the queen, a body that is not JSON), so a page the
operator visits can neither call the queen cross-site nor rebind a name to it.
"""

from __future__ import annotations

import re
import secrets
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING

from rbee.daemon import Message, Receive, Scope, Send, browser_refusal, own_names, send_error
from rbee.queen.http.auth import Need, Principal
from rbee.queen.http.state import QueenState

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["MAX_BODY_BYTES", "PRINCIPAL", "UI_COOKIE", "Front", "ui_session"]

#: The largest request body the queen reads (413 beyond).
MAX_BODY_BYTES = 8 * 1024 * 1024
#: The ASGI scope key under which the routes find who is calling (a `Principal`).
PRINCIPAL = "rbee.principal"
#: The cookie holding the status page's session id.
UI_COOKIE = "rbee_ui"

_INFERENCE = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/rerank"}
)
#: What a path needs, whatever the method; `_needs` says it for the other paths.
_NEEDS: dict[str, Need] = {
    "/health": "open",
    "/v1/chat/completions": "inference",
    "/v1/completions": "inference",
    "/v1/responses": "inference",
    "/v1/embeddings": "inference",
    "/v1/rerank": "inference",
    "/v1/models": "inference",
    "/ui/login": "open",
    "/ui/logout": "open",
}
#: What a plan key may call, as "METHOD /path" (`{…}` is one path segment): it plans and reads
#: the control plane's state, and changes nothing.
_PLAN_ROUTES = (
    "POST /v1/plan",
    "GET /v1/status",
    "GET /v1/hives",
    "GET /v1/hives/{name}",
    "GET /v1/workers",
    "GET /v1/workers/{worker_id}",
    "GET /v1/lock",
    "GET /v1/history",
)
_PLAN = re.compile("|".join(re.sub(r"\{\w+\}", "[^/]+", route) for route in _PLAN_ROUTES))
#: Who a 403 tells the caller to come back as.
_WHO: dict[Need, str] = {
    "inference": "an inference or admin key",
    "plan": "a plan or admin key",
    "admin": "an admin key",
}
_FORMS = frozenset({"/ui/login", "/ui/logout"})  # the status page's own forms
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")


class _Gone(Exception):
    """The client disconnected while sending its body."""


class Front:
    """ASGI middleware and router of the queen (see the module's docstring)."""

    def __init__(
        self,
        app: Starlette,
        queen: QueenState,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        host_names: frozenset[str] | None = None,
    ) -> None:
        self.app = app
        self.queen = queen
        self._auth = queen.auth
        self._sessions = queen.sessions
        self._relay = queen.relay
        self._max_body = max_body_bytes
        self._names = own_names() if host_names is None else host_names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = browser_refusal(scope, self._names, form_paths=_FORMS)
        if refusal is not None:
            status, message, code = refusal
            await send_error(send, status, message, "invalid_request_error", code)
            return
        authorization = request_id = length = cookie = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-request-id":
                request_id = value
            elif name == b"content-length":
                length = value
            elif name == b"cookie":
                cookie = value
        if request_id is None or not _REQUEST_ID.match(request_id):
            request_id = secrets.token_hex(12).encode()
        path = scope["path"]
        on_ui = path == "/" or path.startswith("/ui/")
        if on_ui and authorization is None and cookie is not None:
            session_id = ui_session(cookie)
            secret = self._sessions.secret(session_id) if session_id else None
            authorization = None if secret is None else b"Bearer " + secret.encode()
        needed = _NEEDS.get(path) or _needs(scope["method"], path)
        principal = self._auth.authenticate(authorization, needed)
        if not isinstance(principal, Principal):
            if path == "/" and scope["method"] in ("GET", "HEAD"):
                await _to_login(send, request_id)
                return
            await self._deny(send, principal, request_id, f"{scope['method']} {path}", needed)
            return
        body = b""
        if scope["method"] in ("POST", "PUT", "PATCH"):
            if length is not None and length.isdigit() and int(length) > self._max_body:
                await self._too_large(send, request_id)
                return
            try:
                read = await _read_body(receive, self._max_body)
            except _Gone:
                return
            if read is None:
                await self._too_large(send, request_id)
                return
            body = read
            if path in _INFERENCE:
                await self._relay.handle(scope, receive, send, body, principal, request_id)
                return
        scope[PRINCIPAL] = principal
        await self.app(scope, _replay(body, receive), _with_request_id(send, request_id))

    async def _deny(
        self, send: Send, status: int, request_id: bytes, route: str, needed: Need
    ) -> None:
        self.queen.metrics.rejected.labels("unauthorized" if status == 401 else "forbidden").inc()
        headers = [(b"x-request-id", request_id)]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
            await send_error(
                send,
                401,
                "missing or unknown API key: send `Authorization: Bearer KEY`",
                "authentication_error",
                "invalid_api_key",
                headers,
            )
            return
        await send_error(
            send,
            403,
            f"this key's scope does not allow {route}: it needs {_WHO.get(needed, 'a key')}",
            "permission_error",
            "insufficient_scope",
            headers,
        )

    async def _too_large(self, send: Send, request_id: bytes) -> None:
        self.queen.metrics.rejected.labels("too_large").inc()
        await send_error(
            send,
            413,
            f"the request body is larger than {self._max_body} bytes",
            "invalid_request_error",
            "request_too_large",
            [(b"x-request-id", request_id), (b"connection", b"close")],
        )


def ui_session(cookie: bytes) -> str | None:
    """The status page's session id in a `Cookie` header, if it holds one."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie.decode("latin-1"))
    except CookieError:
        return None
    morsel = jar.get(UI_COOKIE)
    return None if morsel is None or not morsel.value else morsel.value


async def _to_login(send: Send, request_id: bytes) -> None:
    """303 to the status page's login form."""
    headers = [(b"location", b"/ui/login"), (b"content-length", b"0")]
    headers.append((b"x-request-id", request_id))
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _needs(method: str, path: str) -> Need:
    """What a route outside `_NEEDS` asks for."""
    if path == "/v1/jobs" or path.startswith("/v1/jobs/"):
        return "inference"
    if _PLAN.fullmatch(f"{'GET' if method == 'HEAD' else method} {path}"):
        return "plan"
    return "admin"


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read, then the real one's messages."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _with_request_id(send: Send, request_id: bytes) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
        await send(message)

    return wrapped
