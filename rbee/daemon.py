"""What every rbee daemon shares: binding its port, bearer-token auth, the uvicorn loop."""

from __future__ import annotations

import errno
import hmac
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
from rbee.wire import openai_error

__all__ = [
    "ASGIApp",
    "BearerAuth",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "bind",
    "env_token",
    "fail",
    "listen",
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
    """A daemon's start: logging set up and its port bound. A non-loopback address without a
    token, or a port in use, ends the process with one line on stderr (exit 1)."""
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
