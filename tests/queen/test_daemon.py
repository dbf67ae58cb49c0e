"""queen-rbee as a process: a port conflict gives one clear line, no traceback; a queen started
without a token makes one and wants it."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fixtures.ports import free_port


def _queen(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rbee.queen.server", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )


def test_port_in_use_is_one_line_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _queen("--port", str(port), home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use "
        "(stop what listens there or choose another --port)"
    ]


def test_a_queen_without_a_token_makes_one_and_answers_none_without_it(tmp_path: Path) -> None:
    """No token given, on loopback: the queen is not open, it makes the cluster token (a file
    of the operator's alone) and wants it, or a key, on every route but /health."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rbee.queen.server", "--port", str(port)],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                assert httpx.get(f"{url}/health", timeout=1).status_code == 200
                break
            except httpx.TransportError:
                assert proc.poll() is None, "the queen exited"
                assert time.monotonic() < deadline, "queen did not start"
                time.sleep(0.05)
        body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.get(f"{url}/v1/status", timeout=5).status_code == 401
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=5).status_code == 401
        token_file = tmp_path / ".local" / "state" / "rbee" / "cluster.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        bearer = {"authorization": f"Bearer {token_file.read_text().strip()}"}
        assert httpx.get(f"{url}/v1/status", headers=bearer, timeout=5).status_code == 200
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=bearer, timeout=5)
        assert answer.status_code == 404  # let in: no such model
        wrong = {"authorization": "Bearer not-the-token"}
        assert httpx.get(f"{url}/v1/status", headers=wrong, timeout=5).status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)
