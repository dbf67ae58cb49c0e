"""Users see rbee's words only: with Python's warnings on (`-W default`), a dependency's
deprecation warning never reaches the stderr of the queen, a hive, a worker or the keeper.

A probe on PYTHONPATH (a `sitecustomize`) warns, as a dependency would, whenever typer,
httpx or uvicorn is imported, so the test does not hang on whichever dependency warns this
month; the first test shows the probe does print where rbee does not route warnings.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from rbee.net import http_url, https_url
from rbee.wire import HiveArgs, QueenArgs, WorkerArgs
from tests.fixtures.pki import client_tls, identity, seed_authority
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow

_PROBE = """\
import sys, warnings

class _WarnOnImport:
    def find_spec(self, name, path=None, target=None):
        if name in ("typer", "httpx", "uvicorn"):
            warnings.warn(f"probe: {name} is deprecated", DeprecationWarning, stacklevel=2)
        return None

sys.meta_path.insert(0, _WarnOnImport())
"""
# A daemon's log line: `2026-12-07 08:44:04,123 level=INFO service=queen-rbee logger=…`.
_OWN_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} level=[A-Z]+ "
    r"service=(queen-rbee|rbee-hive|llm-worker-rbee) logger=\S+ "
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(_PROBE)
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RBEE_", "PYTHON"))}
    return {**keep, "HOME": str(tmp_path), "PYTHONPATH": str(probe)}


def _python(*args: str) -> list[str]:
    return [sys.executable, "-W", "default", *args]


def test_the_probe_warns_on_stderr_where_nobody_routes_warnings(env: dict[str, str]) -> None:
    result = subprocess.run(
        _python("-c", "import httpx"), env=env, capture_output=True, text=True, timeout=60
    )
    assert "DeprecationWarning: probe: httpx is deprecated" in result.stderr


def test_the_keeper_prints_rbees_words_only(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    url = f"http://127.0.0.1:{free_port()}"
    config.write_text(f"version: 1\nqueen: {{url: '{url}'}}\n")

    def rbee(*args: str) -> subprocess.CompletedProcess[str]:
        argv = _python("-m", "rbee.cli", *args)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    usage = rbee("--help")
    assert (usage.returncode, usage.stderr) == (0, "")
    assert usage.stdout.startswith("Usage: ")
    valid = rbee("validate", "-f", str(config))
    assert (valid.returncode, valid.stderr) == (0, "")
    assert valid.stdout == f"{config}: valid (0 hives, 0 models, 0 deployments)\n"
    down = rbee("queen", "status", "-f", str(config))
    assert (down.returncode, down.stderr) == (1, "")
    assert down.stdout == f"queen at {url}: not running\n"


def test_the_daemons_stderr_holds_their_own_log_lines_only(
    env: dict[str, str], tmp_path: Path, gguf: Path
) -> None:
    seed_authority(tmp_path)  # the queen's CA is the tests' CA: it trusts the worker's identity
    queen = QueenArgs(port=free_port(), db=tmp_path / "queen.db")
    cluster_url = https_url(queen.host, queen.port + 1)
    hive = HiveArgs(
        port=free_port(),
        name="local",
        queen_url=http_url(queen.host, queen.port),
        identity=str(identity("hive", "local")),
    )
    worker = WorkerArgs(
        worker_id="local.gemma3-270m.0",
        hive="local",
        model="gemma3-270m",
        model_path=str(gguf),
        port=free_port(),
        ctx_size=256,
        queen_url=cluster_url,
        identity=str(identity("worker", "local/local.gemma3-270m.0")),
    )
    logs = {name: tmp_path / f"{name}.stderr" for name in ("queen", "hive", "worker")}
    processes = []
    try:
        for name, args in (("queen", queen), ("hive", hive), ("worker", worker)):
            with logs[name].open("w") as stderr:
                argv = _python("-m", args.MODULE, *args.to_argv())
                processes.append(subprocess.Popen(argv, env=env, stderr=stderr))
        _wait_for(http_url(queen.host, queen.port), lambda health: True)
        _wait_for(https_url(hive.host, hive.port), lambda health: True)
        _wait_for(worker.url, lambda health: health.get("state") == "idle")
        answer = httpx.post(
            f"{worker.url}/v1/completions",
            json={"prompt": "Bees", "max_tokens": 2},
            timeout=60,
            verify=client_tls("queen", "queen"),
        )
        assert answer.status_code == 200, answer.text
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    for name, path in logs.items():
        lines = path.read_text().splitlines()
        assert lines, f"{name} logged nothing: is its stderr still where its log goes?"
        assert [line for line in lines if not _OWN_LINE.match(line)] == [], name


def _wait_for(url: str, ready: Callable[[dict[str, Any]], bool]) -> None:
    """Poll `url`'s /health (over https as the queen) until `ready` accepts it."""
    verify = client_tls("queen", "queen") if url.startswith("https") else True
    deadline = time.monotonic() + 60
    while True:
        try:
            health = httpx.get(f"{url}/health", timeout=1, verify=verify)
            if health.status_code == 200 and ready(health.json()):
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not come up"
        time.sleep(0.1)
