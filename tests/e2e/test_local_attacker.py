"""Another user on the operator's machine, against a cluster up from a YAML without a token
(rbee makes one) whose queen serves its front door over TLS with rbee's own certificate: the
queen answers nothing without a credential, the hive and the worker nothing without a
certificate of the cluster's CA, and rbee's files are the operator's alone.

The attacker is a real unprivileged process (`setpriv` to nobody) with the system's Python.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import LocalCluster, applied_cluster

pytestmark = pytest.mark.slow

# Run as nobody: every door of the cluster, then the files. Prints one JSON object.
_PROBE = r"""
import json, socket, ssl, sys, urllib.error, urllib.request
queen, hive, worker, sockets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
files = sys.argv[5:]
seen = {}

def http(name, method, url, body=None):
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"content-type": "application/json"})
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            seen[name] = response.status
    except urllib.error.HTTPError as exc:
        seen[name] = exc.code
    except Exception as exc:
        seen[name] = type(exc).__name__

spawn = json.dumps({"worker_id": "x", "hive": "local", "model": "m", "queen_url": "http://x",
                    "worker_binary": "/bin/sh"}).encode()
http("queen_status", "GET", queen + "/v1/status")
http("queen_chat", "POST", queen + "/v1/chat/completions", b'{"model": "gemma3-270m"}')
http("queen_keys", "POST", queen + "/v1/keys", b'{"name": "mine", "scope": "admin"}')
http("hive_models", "GET", hive + "/v1/models")
http("hive_spawn", "POST", hive + "/v1/worker-processes", spawn)
http("hive_plain", "GET", hive.replace("https://", "http://") + "/v1/models")
http("worker_chat", "POST", worker + "/v1/completions", b'{"prompt": "hi"}')
for path in sockets:  # the worker's Unix socket, and a way to it past its directory
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 16\r\n\r\n"
                  b'{"prompt": "hi"}')
        seen[path] = int(s.recv(64).split()[1])
    except Exception as exc:
        seen[path] = type(exc).__name__
for path in files:
    try:
        open(path, "rb").read(1)
        seen[path] = "read"
    except OSError as exc:
        seen[path] = type(exc).__name__
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[LocalCluster]:
    with applied_cluster(tmp_path_factory.mktemp("home"), gguf, front_tls=True) as the_cluster:
        yield the_cluster


def _as_nobody(*argv: str) -> dict[str, Any]:
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen


def test_another_user_gets_nothing_from_the_queen_the_hive_or_the_worker(
    cluster: LocalCluster,
) -> None:
    [worker] = cluster.workers()
    assert worker["url"].startswith("https://")
    state = cluster.home / ".local/state/rbee"
    secrets = [state / "cluster.token", state / "queen.db", state / "tls/ca.key"]
    # The worker's socket, and the same socket reached past its private directory and mode
    # (a hard link in an open directory, the socket made 0666 meanwhile): there the kernel's
    # word on who connects is all that keeps another user out.
    socket_path = Path(worker["socket"])
    open_dir = Path(tempfile.mkdtemp(dir=socket_path.parent.parent))  # pytest's are 0700
    open_dir.chmod(0o777)
    linked = open_dir / "worker.sock"
    os.link(socket_path, linked)
    mode = stat.S_IMODE(socket_path.stat().st_mode)
    socket_path.chmod(0o666)
    try:
        seen = _as_nobody(
            "/usr/bin/python3",
            "-c",
            _PROBE,
            cluster.queen_url,
            f"https://127.0.0.1:{cluster.hive_port}",
            worker["url"],
            f"{socket_path},{linked}",
            *map(str, secrets),
        )
    finally:
        socket_path.chmod(mode)
        shutil.rmtree(open_dir)
    assert seen[str(socket_path)] == "PermissionError"
    assert seen[str(linked)] == 401
    assert seen["queen_status"] == 401
    assert seen["queen_chat"] == 401
    assert seen["queen_keys"] == 401
    # The hive and the worker finish no request without a client certificate of the CA.
    for door in ("hive_models", "hive_spawn", "hive_plain", "worker_chat"):
        assert not isinstance(seen[door], int), (door, seen[door])
    for path in secrets:
        assert seen[str(path)] == "PermissionError"
    # The operator's own credential still works, and the cluster is untouched.
    assert cluster.get("/v1/status").status_code == 200
    assert [w["worker_id"] for w in cluster.workers()] == [worker["worker_id"]]


def test_the_front_door_speaks_tls_with_rbees_own_certificate(cluster: LocalCluster) -> None:
    """The keeper trusts the cluster's CA on the queen's machine; anyone else is given it."""
    assert cluster.queen_url.startswith("https://")
    answer = cluster.rbee("infer", "--max-tokens", "4", "Hello")
    assert answer.stdout.strip()
    assert cluster.chat("Hello", max_tokens=2).status_code == 200
    # Not trusted without the CA; nothing on plain HTTP.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{cluster.queen_url}/health", timeout=5)
    plain = cluster.queen_url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/v1/status", headers=cluster.headers, timeout=5)


def test_state_and_caches_are_private_to_the_operator(cluster: LocalCluster) -> None:
    """Every directory rbee made is 0700 and every file in them is the operator's alone."""
    roots = [cluster.home / ".local/state/rbee", cluster.home / ".cache/rbee"]
    checked = 0
    for root in roots:
        assert root.is_dir()
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            if path.is_symlink():
                continue
            if path.is_dir():
                assert mode == 0o700, f"{path}: {oct(mode)}"
            else:
                assert mode & 0o077 == 0, f"{path}: {oct(mode)}"
            checked += 1
    # The token, the CA's key, the database, a log and the model are among them.
    assert checked > 10
