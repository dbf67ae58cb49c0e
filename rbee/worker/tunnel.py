"""The only way to an RPC server: a mutual-TLS tunnel between two hives (issue 23).

llama.cpp's RPC protocol has no authentication and its server writes wherever a client asks:
whoever reaches it runs code on the machine. So its port is never reachable as it is:

- the RPC server (`rpc_server.py`) listens on the loopback of a network namespace of its own,
  which no other process of the machine shares; the server's process alone holds the **gate**,
  a mutual-TLS listener on the hive's address that admits workers of the cluster (their
  certificates are the cluster CA's) and pipes each connection to that loopback;
- the head worker's RPC client connects to its **forwarder**: a listener on this machine's
  loopback that admits only connections from processes of the worker's own user (the kernel's
  socket table says whose socket connects) and pipes each to the gate over TLS, presenting the
  worker's certificate and checking the hive's.

Both ends are asyncio protocols that hand each chunk to the other side's transport as it
arrives (no copies through queues), with TCP_NODELAY, on uvloop: the RPC protocol is
request/response with small messages, so latency, not bandwidth, is what a tunnel costs
(`bench/rpc_tunnel.py`, `bench/rpc_split.py`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

from rbee.net import loopback_peer_uid
from rbee.pki import peer_of, tls_name


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop (uvicorn[standard] brings it wherever it builds), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


__all__ = ["Forwarder", "run_gate", "serve_gate"]

_log = logging.getLogger(__name__)
_Connect = Callable[[], Awaitable[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]]


class _Half(asyncio.Protocol):
    """One end of a pipe: what it receives is written to its partner's transport, and its
    partner's back-pressure pauses its reading."""

    def __init__(self, name: str, on_lost: Callable[[_Half], None] | None = None) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.partner: _Half | None = None
        self.pending: list[bytes] = []
        self.gone = False
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def pair(self, partner: _Half) -> None:
        """Join `partner`: what each held while the other connected goes through now."""
        self.partner, partner.partner = partner, self
        for half in (self, partner):
            for chunk in half.pending:
                half.forward(chunk)
            half.pending.clear()
        if partner.gone:
            self.close()

    def forward(self, data: bytes) -> None:
        partner = self.partner
        if partner is not None and partner.transport is not None and not partner.gone:
            partner.transport.write(data)
        else:
            self.pending.append(data)

    def data_received(self, data: bytes) -> None:
        self.forward(data)

    def eof_received(self) -> bool:
        return False  # close this side; connection_lost closes the partner

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        if self._on_lost is not None:
            self._on_lost(self)
        if self.partner is not None:
            self.partner.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def pause_writing(self) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.resume_reading()


def _join(downstream: _Half, connect: _Connect, what: str) -> None:
    """Connect the upstream of an accepted `downstream` and pair them; the accepted side
    waits (not reading) meanwhile, and is closed when the upstream cannot be reached."""
    assert downstream.transport is not None
    downstream.transport.pause_reading()

    async def run() -> None:
        try:
            _, upstream = await connect()
        except (OSError, ssl.SSLError) as exc:
            _log.warning("tunnel cannot reach %s error=%s", what, exc)
            downstream.close()
            return
        cast(_Half, upstream).pair(downstream)
        if downstream.transport is not None and not downstream.gone:
            downstream.transport.resume_reading()

    asyncio.get_running_loop().create_task(run())


async def serve_gate(
    sock: socket.socket, identity: Path, context: ssl.SSLContext, target: tuple[str, int]
) -> None:
    """The RPC server's gate on `sock` (already listening): a worker of the cluster that
    presents its certificate is piped to `target`, the server's private loopback; anyone
    else fails the TLS handshake (no certificate, or not the cluster CA's) or is closed.
    A renewed identity file (the hive renews its certificate) is taken for new connections."""
    loop = asyncio.get_running_loop()
    stamp = [identity.stat().st_mtime_ns]

    class Accepted(_Half):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            peer = peer_of(transport.get_extra_info("ssl_object"))
            if peer is None or peer.role != "worker":
                _log.warning("gate refused a connection peer=%s", peer)
                transport.close()
                return
            _log.info("gate admitted worker=%s", peer.name)
            _join(self, lambda: loop.create_connection(lambda: _Half("rpc"), *target), "rpc")

    def accept() -> _Half:
        mtime = identity.stat().st_mtime_ns
        if mtime != stamp[0]:
            context.load_cert_chain(identity)
            stamp[0] = mtime
        return Accepted("gate")

    server = await loop.create_server(accept, sock=sock, ssl=context)
    async with server:
        await server.serve_forever()


def run_gate(
    sock: socket.socket, identity: Path, context: ssl.SSLContext, target: tuple[str, int]
) -> None:
    """`serve_gate` on an event loop of its own, until the process is stopped."""
    loop = _new_loop()
    try:
        loop.run_until_complete(serve_gate(sock, identity, context, target))
    finally:
        loop.close()


class Forwarder:
    """The head worker's end: `127.0.0.1:port` (its RPC client connects there) piped to a
    hive's gate over mutual TLS. Runs its own event loop in a daemon thread.

    `on_lost` is called (from that thread) when the gate closes a connection the worker still
    holds: the RPC server is gone with the model's layers it held, and the worker cannot go
    on without them."""

    def __init__(
        self,
        hive: str,
        gate: tuple[str, int],
        context: ssl.SSLContext,
        on_lost: Callable[[str], None],
    ) -> None:
        self.hive = hive
        self._gate = gate
        self._context = context
        self._on_lost = on_lost
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._uid = os.getuid()
        self._loop = _new_loop()
        threading.Thread(target=self._run, name=f"rpc-tunnel-{hive}", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        server = await self._loop.create_server(self._accept, sock=self._sock)
        async with server:
            await server.serve_forever()

    def _accept(self) -> _Half:
        forwarder = self

        class Accepted(_Half):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                peer = transport.get_extra_info("peername")
                local = transport.get_extra_info("sockname")
                if loopback_peer_uid(peer, local) != forwarder._uid:
                    _log.warning("rpc tunnel refused a process of another user peer=%s", peer)
                    transport.close()
                    return
                _join(self, forwarder._connect, f"hive {forwarder.hive}'s gate")

        return Accepted("client")

    async def _connect(self) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        return await self._loop.create_connection(
            lambda: _Half("gate", self._lost),
            *self._gate,
            ssl=self._context,
            server_hostname=tls_name("hive", self.hive),
        )

    def _lost(self, upstream: _Half) -> None:
        client = upstream.partner
        if client is not None and not client.gone:
            self._on_lost(self.hive)
