"""Starting and stopping daemons (rbee.process), with real child processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from rbee.errors import RbeeError, UnavailableError
from rbee.process import start_daemon, terminate
from tests.fixtures.ports import free_port

# A daemon in a few lines: answers GET /health like every rbee daemon, after `delay` seconds.
_SERVER = textwrap.dedent(
    """
    import http.server, json, os, sys, time
    port, delay = int(sys.argv[1]), float(sys.argv[2])
    print("starting up", flush=True)
    time.sleep(delay)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            health = {"status": "ok", "service": "fake", "version": "0", "pid": os.getpid()}
            body = json.dumps(health)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """
)


def _start(argv: list[str], log: Path, port: int, timeout_s: float = 10.0) -> int:
    return asyncio.run(
        start_daemon(
            "the fake daemon",
            argv,
            log,
            f"http://127.0.0.1:{port}",
            token=None,
            accept=lambda health, pid: health.pid == pid,
            timeout_s=timeout_s,
        )
    )


def test_a_daemon_is_started_once_its_health_answers(tmp_path: Path) -> None:
    port = free_port()
    pid = _start([sys.executable, "-c", _SERVER, str(port), "0.3"], tmp_path / "d.log", port)
    try:
        assert psutil.Process(pid).is_running()
    finally:
        assert terminate(psutil.Process(pid), grace_s=5) == "term"


def test_a_daemon_that_exits_is_an_error_carrying_its_last_log_lines(tmp_path: Path) -> None:
    script = "import sys; print('loading config'); sys.exit('error: port 7835 is in use')"
    with pytest.raises(RbeeError) as failure:
        _start([sys.executable, "-c", script], tmp_path / "d.log", free_port())
    assert not isinstance(failure.value, UnavailableError)  # it would fail again: no retry
    assert failure.value.message.startswith("the fake daemon exited right after start")
    assert failure.value.message.endswith("loading config\nerror: port 7835 is in use")
    assert failure.value.hint == f"full log: {tmp_path / 'd.log'}"


def test_a_daemon_that_never_answers_times_out_as_unavailable(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-c", _SERVER, str(port), "60"]
    with pytest.raises(UnavailableError) as failure:
        _start(argv, tmp_path / "d.log", port, timeout_s=0.5)
    assert f"does not answer on http://127.0.0.1:{port}/health after 0.5 s" in str(failure.value)
    assert failure.value.message.endswith("starting up")
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == argv:
            terminate(proc, grace_s=5)


def test_stop_is_sigterm_then_sigkill_after_the_grace_period() -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as polite:
        assert terminate(psutil.Process(polite.pid), grace_s=5) == "term"
    with subprocess.Popen([sys.executable, "-c", stubborn]) as deaf:
        time.sleep(0.3)  # let it install its SIG_IGN
        assert terminate(psutil.Process(deaf.pid), grace_s=0.3) == "kill"
        assert deaf.wait(5) == -9


def test_stopping_a_process_that_is_gone_is_not_an_error() -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as quick:
        proc = psutil.Process(quick.pid)
        quick.wait()
    assert terminate(proc, grace_s=1) == "gone"
