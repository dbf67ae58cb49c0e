"""Slow clients cannot hold a daemon open: a request whose head has not arrived within the head
timeout ($RBEE_HEAD_TIMEOUT_S, 10 s by default) loses its connection, and the daemon answers
everyone else all the while (the 2026-12 probe held queen, hive and worker for 60 s with 1,000
half-sent requests)."""

from __future__ import annotations

import socket
import time

from tests.hive.conftest import HiveFactory

HALF_SENT = 300


def test_half_sent_requests_are_cut_and_others_are_served(start_hive: HiveFactory) -> None:
    hive = start_hive(env={"RBEE_HEAD_TIMEOUT_S": "1"}, tls=False)
    slow = []
    for _ in range(HALF_SENT):
        sock = socket.create_connection(("127.0.0.1", hive.port), timeout=5)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        slow.append(sock)
    try:
        with hive.client() as client:
            started = time.monotonic()
            assert client.get("/v1/models").status_code == 200
            assert time.monotonic() - started < 1.0
        time.sleep(1.5)
        assert sum(_was_cut(sock) for sock in slow) == HALF_SENT
    finally:
        for sock in slow:
            sock.close()


def _was_cut(sock: socket.socket) -> bool:
    """Whether the server closed the connection (a read that would wait is not)."""
    sock.settimeout(0.5)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
