"""queen-rbee as a process: port conflicts and tokens give one clear line, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


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


def test_off_loopback_without_token_is_refused(tmp_path: Path) -> None:
    result = _queen("--host", "0.0.0.0", "--port", "0", home=tmp_path)
    assert result.returncode == 1
    assert "refuses to listen on 0.0.0.0 without a token" in result.stderr
    assert "Traceback" not in result.stderr
