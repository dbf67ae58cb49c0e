"""The only way to an RPC server: its gate admits the cluster's workers over mutual TLS, the
head worker's forwarder admits its own user's sockets, and the worker hears when the server
side goes."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rbee.net import loopback_peer_uid
from rbee.pki import Authority, client_context, server_context, write_private
from rbee.worker.tunnel import Forwarder, run_gate


@dataclass
class Target:
    """What the gate pipes to (llama.cpp's server, in life): echoes, counts connections, and
    can drop them."""

    sock: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    accepted: list[socket.socket] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", int(self.sock.getsockname()[1]))

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            self.accepted.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass


@dataclass
class Tunnel:
    target: Target
    gate: tuple[str, int]
    pki: Path
    lost: list[str]

    def forwarder(self, on_lost: Callable[[str], None] | None = None) -> Forwarder:
        context = client_context(self.pki / "worker.pem")
        return Forwarder("b", self.gate, context, on_lost or self.lost.append)

    def tls(self, bundle: str | None) -> ssl.SSLSocket:
        """A direct TLS connection to the gate, with `bundle`'s certificate or none."""
        context = ssl.create_default_context(cafile=self.pki / "ca.pem")
        context.check_hostname = False
        if bundle is not None:
            context.load_cert_chain(self.pki / bundle)
        return context.wrap_socket(socket.create_connection(self.gate, timeout=5))


@pytest.fixture
def tunnel(tmp_path: Path) -> Iterator[Tunnel]:
    authority = Authority(tmp_path / "ca")
    shutil.copyfile(tmp_path / "ca" / "ca.pem", tmp_path / "ca.pem")
    for role, name in (("hive", "b"), ("worker", "a.m.0"), ("queen", "queen")):
        bundle = authority.issue(role, name, ["127.0.0.1"])  # type: ignore[arg-type]
        write_private(tmp_path / f"{role}.pem", bundle)
    target = Target()
    gate = socket.create_server(("127.0.0.1", 0))
    identity = tmp_path / "hive.pem"
    threading.Thread(
        target=run_gate, args=(gate, identity, server_context(identity), target.address),
        daemon=True,
    ).start()  # fmt: skip
    yield Tunnel(target, ("127.0.0.1", int(gate.getsockname()[1])), tmp_path, [])


def _exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.settimeout(5)
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_a_worker_of_the_cluster_goes_through_and_its_bytes_come_back(tunnel: Tunnel) -> None:
    forwarder = tunnel.forwarder()
    payload = os.urandom(300_000)
    with socket.create_connection(("127.0.0.1", forwarder.port), timeout=5) as conn:
        assert _exchange(conn, payload) == payload
    assert len(tunnel.target.accepted) == 1


def test_the_gate_lets_no_one_but_a_worker_through(tunnel: Tunnel) -> None:
    """No certificate: the handshake fails. The queen's certificate (of the cluster, not a
    worker's): the gate closes the connection. No TLS: an alert. None reaches the target."""
    hello = b"\x0e" + bytes(8)  # llama.cpp's RPC_CMD_HELLO, as its client opens

    def answer(connect: Callable[[], socket.socket]) -> bytes | str:
        try:
            with connect() as conn:
                return _exchange(conn, hello)
        except OSError as exc:  # ssl.SSLError is one
            return type(exc).__name__

    assert answer(lambda: tunnel.tls(None)) in ("SSLError", "SSLEOFError", b"")
    assert answer(lambda: tunnel.tls("queen.pem")) in (b"", "SSLEOFError", "ConnectionResetError")
    plain = answer(lambda: socket.create_connection(tunnel.gate, timeout=5))
    assert isinstance(plain, bytes) and plain[:1] in (b"", b"\x15"), plain  # nothing, or an alert
    time.sleep(0.2)
    assert tunnel.target.accepted == []


def test_the_forwarder_admits_no_process_of_another_user(tunnel: Tunnel) -> None:
    forwarder = tunnel.forwarder()
    script = (
        "import socket, sys\n"
        "conn = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)\n"
        "conn.sendall(b'hello')\n"
        "try:\n"
        "    print(conn.recv(16) or b'closed')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    stranger = subprocess.run(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", script, str(forwarder.port)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert stranger.stdout.strip() in ("b'closed'", "ConnectionResetError"), stranger
    assert tunnel.target.accepted == []
    # The same connection from this user goes through: the refusal is the user.
    with socket.create_connection(("127.0.0.1", forwarder.port), timeout=5) as conn:
        assert _exchange(conn, b"hello") == b"hello"


def test_the_worker_hears_when_the_server_side_drops_a_connection_it_holds(
    tunnel: Tunnel,
) -> None:
    forwarder = tunnel.forwarder()
    with socket.create_connection(("127.0.0.1", forwarder.port), timeout=5) as conn:
        assert _exchange(conn, b"x") == b"x"
        conn.close()  # the worker's own close is no loss
    time.sleep(0.3)
    assert tunnel.lost == []
    with socket.create_connection(("127.0.0.1", forwarder.port), timeout=5) as held:
        assert _exchange(held, b"y") == b"y"
        tunnel.target.accepted[-1].shutdown(socket.SHUT_RDWR)  # the RPC server went away
        deadline = time.monotonic() + 5
        while not tunnel.lost and time.monotonic() < deadline:
            time.sleep(0.05)
    assert tunnel.lost == ["b"]


def test_the_kernel_says_which_user_holds_a_loopback_socket() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, peer = server.accept()
        with client, conn:
            assert loopback_peer_uid(peer, conn.getsockname()) == os.getuid()
            assert loopback_peer_uid(("127.0.0.1", 1), conn.getsockname()) is None
