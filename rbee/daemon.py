"""What every rbee daemon shares: binding its port, who may call it (a TLS client certificate
of the right role, or a bearer token), what a browser may not send, and the uvicorn loop with
its limits (a deadline for each request's head, a cap on connections)."""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import json
import logging
import os
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rbee.errors import PortInUseError, RbeeError
from rbee.net import peer_credentials
from rbee.paths import cache_dir, private_dir, state_dir
from rbee.pki import Peer, Role, peer_of
from rbee.wire import openai_error

__all__ = [
    "CONNECTION_CAP",
    "HEAD_TIMEOUT_S",
    "PEER",
    "ASGIApp",
    "BearerAuth",
    "BrowserGuard",
    "Listener",
    "Message",
    "PeerAuth",
    "Receive",
    "Scope",
    "Send",
    "bind",
    "bind_unix",
    "browser_refusal",
    "env_token",
    "fail",
    "listen",
    "own_names",
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
#: The ASGI scope key holding the verified TLS peer of the request's connection (or None).
PEER = "rbee.peer"
#: Seconds a client has to send a request's line and headers ($RBEE_HEAD_TIMEOUT_S): slow
#: clients cannot hold connections (and file descriptors) open at will.
HEAD_TIMEOUT_S = float(os.environ.get("RBEE_HEAD_TIMEOUT_S", "10"))
#: The most connections (and running requests) a daemon serves at once; past it, 503.
CONNECTION_CAP = 2048


class BearerAuth:
    """ASGI middleware: every path but /health needs `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        await send_error(
            send, 401, "missing or wrong bearer token", "authentication_error", "unauthorized"
        )

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False


class PeerAuth:
    """ASGI middleware of a mutual-TLS listener: every path but /health needs a client
    certificate of the cluster's CA (TLS checked that) whose role `allowed(role, method, path)`
    accepts."""

    def __init__(self, app: ASGIApp, allowed: Callable[[Role, str, str], bool]) -> None:
        self.app = app
        self._allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        peer: Peer | None = scope.get(PEER)
        if peer is None:
            await send_error(
                send, 401, "a client certificate is required", "authentication_error",
                "unauthorized",
            )  # fmt: skip
        elif not self._allowed(peer.role, scope["method"], scope["path"]):
            await send_error(
                send, 403, f"a {peer.role} may not call this route", "permission_error",
                "insufficient_scope",
            )  # fmt: skip
        else:
            await self.app(scope, receive, send)


def _same_user(transport: asyncio.Transport) -> Peer | None:
    """The queen, for a connection on a Unix socket from a process of this daemon's own user
    (the kernel says who, `SO_PEERCRED`): a worker's socket is how the queen on its machine
    reaches it without TLS. Nobody else can be that user; root can be anyone anyway."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    _, uid, _ = peer_credentials(sock)
    return Peer("queen", "local") if uid == os.getuid() else None


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at `path`, 0600 (a stale one from a dead process replaced)."""
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))  # under the daemon's umask 077: the operator's alone from the start
        path.chmod(0o600)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class _Protocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, plus the TLS peer in each request's scope (`PEER`) and a
    deadline for each request's head (`HEAD_TIMEOUT_S`)."""

    _peer: Peer | None = None
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peer = peer_of(transport.get_extra_info("ssl_object")) or _same_user(transport)
        self._start_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[PEER] = self._peer  # type: ignore[literal-required]
        if self._head_deadline is None:
            self._start_head_deadline()

    def on_headers_complete(self) -> None:
        self._stop_head_deadline()
        super().on_headers_complete()

    def _start_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(HEAD_TIMEOUT_S, self.transport.close)

    def _stop_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None


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


def listen(service: str, host: str, port: int) -> socket.socket:
    """A daemon's start: what it writes private to the operator, logging set up and its port
    bound. A port in use ends the process with one line on stderr (exit 1)."""
    # Every file and directory a daemon makes (database, logs, catalogs, runtimes) is 0600 or
    # 0700; the roots an older rbee made open are closed.
    os.umask(0o077)
    state_dir()
    if cache_dir().is_dir():
        private_dir(cache_dir())
    setup_logging(service)
    try:
        return bind(host, port)
    except RbeeError as exc:
        fail(exc)


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


@dataclass
class Listener:
    """One port a daemon serves: its app, its bound socket, its TLS (None: plain HTTP), and
    whether the app's lifespan runs there (once per process: on its first listener)."""

    app: ASGIApp
    sock: socket.socket
    tls: ssl.SSLContext | None = None
    lifespan: bool = True


def run_daemon(*listeners: Listener, log_level: str = "warning") -> None:
    """Serve every listener with uvicorn (uvloop + httptools when present) until a signal or
    one of them stops; then stop them all."""
    servers = [uvicorn.Server(_config(listener, log_level)) for listener in listeners]

    async def serve_all() -> None:
        tasks = [
            asyncio.create_task(server.serve(sockets=[listener.sock]))
            for server, listener in zip(servers, listeners, strict=True)
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)

    with asyncio.Runner(loop_factory=servers[0].config.get_loop_factory()) as runner:
        runner.run(serve_all())


def _config(listener: Listener, log_level: str) -> uvicorn.Config:
    config = uvicorn.Config(
        listener.app,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,  # no daemon sits behind a proxy it should trust
        timeout_graceful_shutdown=5,
        lifespan="on" if listener.lifespan else "off",
        http=_Protocol,
        limit_concurrency=CONNECTION_CAP,
    )
    config.load()
    config.ssl = listener.tls
    return config


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
