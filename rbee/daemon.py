"""What every rbee daemon shares: binding its port, bearer-token auth, the uvicorn loop."""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NoReturn

import uvicorn

from rbee.errors import PortInUseError, RbeeError
from rbee.net import LOCAL_HOSTS
from rbee.paths import cache_dir, private_dir, state_dir
from rbee.wire import openai_error

__all__ = [
    "ASGIApp",
    "BearerAuth",
    "BrowserGuard",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "bind",
    "browser_refusal",
    "env_token",
    "fail",
    "listen",
    "own_names",
    "require_token_off_loopback",
    "run_daemon",
    "send_error",
    "setup_logging",
]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_OPEN_PATHS = frozenset({"/health"})


class BearerAuth:
    """ASGI middleware: every path but /health needs `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._expected is None
            or scope["type"] != "http"
            or scope["path"] in _OPEN_PATHS
            or self._authorized(scope)
        ):
            await self.app(scope, receive, send)
            return
        await send_error(
            send, 401, "missing or wrong bearer token", "authentication_error", "unauthorized"
        )

    def _authorized(self, scope: Scope) -> bool:
        assert self._expected is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False


def own_names(*names: str | None) -> frozenset[str]:
    """The host names a daemon answers to besides IP literals: localhost, this machine's
    names, and `names` (its bind address or public URL's host, when those are names)."""
    found = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(found | {name.lower() for name in names if name})


def browser_refusal(
    scope: Scope, names: frozenset[str], *, form_paths: frozenset[str] = frozenset()
) -> tuple[int, str, str] | None:
    """Why a request that a web page could have made is refused ((status, message, code)), or
    None. rbee's clients send none of what is refused here:

    - an `Origin` other than the daemon's own (a page elsewhere calling it cross-site);
    - a `Host` that is not an IP literal or one of `names` (DNS rebinding: a page whose
      name resolves to this machine is same-origin with it, but names itself in `Host`);
    - a request body that is not `application/json` (a form or `text/plain` POST, which a
      browser sends cross-site without asking first); `form_paths` take a form too.
    """
    host = origin = content_type = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1").lower()
        elif name == b"origin":
            origin = value.decode("latin-1").lower()
        elif name == b"content-type":
            content_type = value.decode("latin-1").lower()
    if host is not None and not _is_own_host(host, names):
        return 400, f"this server does not answer to the host name in Host: {host!r}", "bad_host"
    if origin is not None and origin.partition("://")[2] != host:
        return 403, f"cross-origin requests are refused (Origin: {origin!r})", "cross_origin"
    if content_type is not None and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
        media = content_type.partition(";")[0].strip()
        if media != "application/json" and not (
            media == "application/x-www-form-urlencoded" and scope["path"] in form_paths
        ):
            return 415, f"send the body as application/json, not {media!r}", "unsupported_media"
    return None


def _is_own_host(host: str, names: frozenset[str]) -> bool:
    """Whether `Host` (name or address, with or without a port) names this daemon."""
    if host.startswith("["):  # [v6]:port
        literal = host[1 : host.find("]")] if "]" in host else host
    else:
        literal = host.rpartition(":")[0] if host.count(":") == 1 else host
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        return literal in names
    return True


class BrowserGuard:
    """ASGI middleware: what `browser_refusal` refuses gets its error, in OpenAI's shape."""

    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self.app = app
        self._names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = browser_refusal(scope, self._names) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, code = refusal
        await send_error(send, status, message, "invalid_request_error", code)


async def send_error(
    send: Send,
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A complete JSON error response in OpenAI's shape, straight on ASGI's `send`."""
    body = json.dumps(openai_error(message, type_, code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def env_token(flag: str | None) -> str | None:
    """The daemon's token: its `--token` flag, else $RBEE_TOKEN; None when neither is set."""
    return flag or os.environ.get("RBEE_TOKEN") or None


def listen(service: str, host: str, port: int, token: str | None) -> socket.socket:
    """A daemon's start: what it writes private to the operator, logging set up and its port
    bound. A non-loopback address without a token, or a port in use, ends the process with one
    line on stderr (exit 1)."""
    # Every file and directory a daemon makes (database, logs, catalogs, runtimes) is 0600 or
    # 0700; the roots an older rbee made open are closed.
    os.umask(0o077)
    state_dir()
    if cache_dir().is_dir():
        private_dir(cache_dir())
    setup_logging(service)
    try:
        require_token_off_loopback(host, token, service)
        return bind(host, port)
    except RbeeError as exc:
        fail(exc)


def require_token_off_loopback(host: str, token: str | None, service: str) -> None:
    """Refuse to serve on a non-loopback address without a token."""
    if host not in LOCAL_HOSTS and not token:
        raise RbeeError(
            f"{service} refuses to listen on {host} without a token",
            hint="set RBEE_TOKEN (or --token), or bind to 127.0.0.1",
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; port 0 picks a free one. Port in use → PortInUseError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is already in use",
                hint="stop what listens there or choose another --port",
            ) from None
        raise RbeeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_daemon(app: ASGIApp, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve `app` on an already bound socket with uvicorn (uvloop + httptools when present)."""
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,  # no daemon sits behind a proxy it should trust
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])


def fail(exc: RbeeError) -> NoReturn:
    """Print an expected failure as one line on stderr and exit 1 (daemon entry points)."""
    line = f"error: {exc.message}"
    if exc.hint:
        line += f" ({exc.hint})"
    print(line, file=sys.stderr)
    raise SystemExit(exc.exit_code)


def setup_logging(service: str) -> None:
    """key=value logs on stderr; RBEE_LOG_LEVEL picks the level."""
    logging.basicConfig(
        level=os.environ.get("RBEE_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s level=%(levelname)s service={service} logger=%(name)s %(message)s",
    )
    # asyncssh logs every command it runs at INFO; httpx every request.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
