"""The queen's HTTP/1.1 client to its workers: pooled keep-alive connections, httptools parsing.

The relay's hot path spent more time in aiohttp's client than in everything else it does
(bench/router.py, py-spy): request and response objects, header multidicts, cookie jars and
tracing hooks that a relay to its own workers does not use. This client does one thing: send
a POST with a body over a kept-alive connection and hand back the status, the headers and the
body chunks as they arrive. Parsing is httptools (llhttp), the parser uvicorn uses.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
from collections.abc import Sequence
from typing import cast

import httptools

from rbee.net import peer_credentials

__all__ = ["Connection", "Pool", "UpstreamClosed", "UpstreamTimeout", "header_block"]

Headers = list[tuple[bytes, bytes]]


class UpstreamClosed(ConnectionError):
    """The worker closed or reset the connection before the answer was complete."""


class UpstreamTimeout(TimeoutError):
    """The worker sent nothing for too long: `kind` is first_byte or idle."""

    def __init__(self, kind: str, seconds: float) -> None:
        what = "no first byte" if kind == "first_byte" else "no data"
        super().__init__(f"{what} for {seconds:g} s")
        self.kind = kind


class Connection(asyncio.Protocol):
    """One keep-alive connection to a worker; one request at a time."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self.status = 0
        self.headers: Headers = []
        self._head: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._error: BaseException | None = None
        self.reusable = False
        # The watchdog: one timer per quiet period, not one per chunk.
        self._first_byte_s = 0.0
        self._idle_s = 0.0
        self._got_body = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamClosed(f"malformed answer from the worker: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._disarm()
        if not self._complete and self._error is None:
            self._fail(UpstreamClosed(f"the worker closed the connection ({exc!r})"))

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._got_body = True
        self._last = self._loop.time()
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        self.reusable = self._parser.should_keep_alive()
        self._disarm()
        self._wake()

    # -- what the relay uses ----------------------------------------------------------------

    def request(
        self,
        path: bytes,
        host: bytes,
        body: bytes,
        headers: bytes,
        first_byte_s: float,
        idle_s: float,
    ) -> asyncio.Future[None]:
        """Send a POST; the returned future is done when the answer's head has arrived.

        Until the first body byte, at most `first_byte_s` may pass, then at most `idle_s`
        between chunks: past that, waiting calls raise UpstreamTimeout and the connection
        is closed.
        """
        assert self.transport is not None
        self.status, self.headers, self._complete, self._error = 0, [], False, None
        self._chunks.clear()
        self._parser = httptools.HttpResponseParser(self)
        self._head = self._loop.create_future()
        self._first_byte_s, self._idle_s, self._got_body = first_byte_s, idle_s, False
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._last + first_byte_s, self._check)
        self.transport.write(
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n%s\r\n%s"
            % (path, host, len(body), headers, body)
        )
        return self._head

    @property
    def got_body(self) -> bool:
        return self._got_body

    @property
    def complete(self) -> bool:
        """Whether the whole answer has arrived."""
        return self._complete

    @property
    def drained(self) -> bool:
        """Whether the whole answer has arrived and been read."""
        return self._complete and not self._chunks

    def _check(self) -> None:
        self._timer = None
        if self._complete or self._error is not None:
            return
        limit = self._idle_s if self._got_body else self._first_byte_s
        due = self._last + limit
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self._fail(UpstreamTimeout("idle" if self._got_body else "first_byte", limit))
        self.close()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def read(self) -> bytes:
        """The next body chunk as it arrives; b"" at the end of the answer."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(self._chunks) == 1:
            return self._chunks.popleft()
        joined = b"".join(self._chunks)
        self._chunks.clear()
        return joined

    def abort(self, reason: str) -> None:
        """Fail the request in flight with UpstreamClosed(`reason`) and close."""
        self._fail(UpstreamClosed(reason))
        self.close()

    def close(self) -> None:
        self.reusable = False
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: nobody may be waiting any more
        self._wake()


class Pool:
    """Idle keep-alive connections by (host, port), or (Unix socket, 0); TLS to https://
    addresses with `tls`."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._tls = tls

    def idle(self, key: tuple[str, int]) -> Connection | None:
        """A kept-alive connection to `key` (host and port, or socket and 0), if one is idle."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def connect(
        self, host: str, port: int, timeout_s: float, server_name: str | None = None
    ) -> Connection:
        """A new connection to host:port; TLS when `server_name` is given, whose certificate
        must carry that name (`rbee.pki.tls_name`). TimeoutError after `timeout_s`, OSError if
        refused or not trusted (ssl.SSLError is an OSError)."""
        loop = asyncio.get_running_loop()
        key = (host, port)
        if server_name is not None and self._tls is None:
            raise OSError(f"no TLS identity to reach {server_name} at {host}:{port}")
        tls = None if server_name is None else self._tls
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: Connection(key), host, port, ssl=tls, server_hostname=server_name
            ),
            timeout_s,
        )
        return conn

    async def connect_unix(self, path: str, timeout_s: float) -> Connection:
        """A new connection to the Unix socket `path`, served by a process of this user's
        (the kernel says whose: OSError otherwise, as a refused connection). TimeoutError
        after `timeout_s`."""
        loop = asyncio.get_running_loop()
        transport, conn = await asyncio.wait_for(
            loop.create_unix_connection(lambda: Connection((path, 0)), path), timeout_s
        )
        _, uid, _ = peer_credentials(transport.get_extra_info("socket"))
        if uid != os.getuid():
            conn.close()
            raise OSError(f"{path} is served by uid {uid}, not by this user")
        return conn

    def release(self, conn: Connection) -> None:
        """Give back a connection whose answer was read to its end (closed otherwise)."""
        if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


def header_block(headers: Sequence[tuple[str, str]]) -> bytes:
    """`name: value\\r\\n` lines, for `Connection.request`."""
    return b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in headers)
