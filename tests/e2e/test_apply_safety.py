"""Apply under stress, on real processes: the lock, killed keepers and queens, history.

Each test runs its own cluster (own HOME, own ports): the real `rbee` CLI, a detached
queen, its hive and llama-cpp-python workers on the real Gemma 3 270M model.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rbee.config.load import load_cluster
from tests.fixtures.cluster import (
    LocalCluster,
    current_lock,
    hive_processes,
    kill_strays,
    new_cluster,
    spawn_rbee,
    wait_until,
)

pytestmark = pytest.mark.slow

# `rbee history` and `rbee force-unlock` live in rbee.cli.applies; registered here the way
# rbee/cli/main.py registers them, so this runs the keeper's real entry point either way.
_KEEPER = "from rbee.cli import applies, main; applies.register(main.app); main.main()"
WORKER = "worker.local.gemma3-270m[0]"


@pytest.fixture
def cluster(tmp_path: Path, gguf: Path) -> Iterator[LocalCluster]:
    # Self-heal off: only the applies under test change the cluster.
    the_cluster = new_cluster(tmp_path, gguf, self_heal="false")
    yield the_cluster
    the_cluster.rbee("down", check=False, timeout=60)
    kill_strays(the_cluster)


def _keeper(
    cluster: LocalCluster, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", _KEEPER, *args, "-f", str(cluster.config)],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"rbee {' '.join(args)} exited {result.returncode}\n{result.stderr}")
    return result


def _history(cluster: LocalCluster) -> list[dict[str, Any]]:
    applies: list[dict[str, Any]] = json.loads(_keeper(cluster, "history", "--json").stdout)
    return applies


def _holder(pid: int) -> str:
    return f"held by {getpass.getuser()}@{socket.gethostname()} (pid {pid})"


def _converged(cluster: LocalCluster) -> None:
    plan = cluster.rbee("plan", "--detailed-exitcode", check=False)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert [w["state"] for w in cluster.wait_workers(1)] == ["idle"]


def _queen_pid(cluster: LocalCluster) -> int:
    pid: int = httpx.get(f"{cluster.queen_url}/health", timeout=5).json()["pid"]
    return pid


def _kill_queen_mid_apply(cluster: LocalCluster) -> dict[str, Any]:
    """Start an apply, SIGKILL the queen while the worker loads; returns the lock it left."""
    keeper = spawn_rbee(cluster, "apply", "--auto-approve")
    wait_until("the worker to be spawned", lambda: hive_processes(cluster), timeout=120)
    held = current_lock(cluster)
    assert held is not None, "the apply ended before the queen could be killed"
    os.kill(_queen_pid(cluster), signal.SIGKILL)
    _, stderr = keeper.communicate(timeout=60)
    assert keeper.returncode == 1, stderr
    assert "Traceback" not in stderr
    return held


def test_two_concurrent_applies_one_runs_the_other_fails_naming_the_holder(
    cluster: LocalCluster,
) -> None:
    cluster.rbee("queen", "start")
    keepers = [spawn_rbee(cluster, "apply", "--auto-approve") for _ in range(2)]
    results = [(k, *k.communicate(timeout=240)) for k in keepers]
    [(winner, winner_out, _)] = [r for r in results if r[0].returncode == 0]
    [(loser, _, loser_err)] = [r for r in results if r[0].returncode != 0]
    assert "Apply complete!" in winner_out
    assert loser.returncode == 1
    assert "another apply is running" in loser_err
    assert _holder(winner.pid) in loser_err
    assert "lock ID " in loser_err and "rbee force-unlock " in loser_err
    assert "Traceback" not in loser_err
    assert current_lock(cluster) is None
    _converged(cluster)
    # The refused apply never held the lock: only the one that ran is in the history.
    [entry] = _history(cluster)
    assert (entry["result"], entry["holder"]) == ("ok", _holder(winner.pid)[len("held by ") :])


def test_lock_timeout_waits_for_the_running_apply_then_runs(cluster: LocalCluster) -> None:
    cluster.rbee("queen", "start")
    first = spawn_rbee(cluster, "apply", "--auto-approve")
    wait_until("the first apply to take the lock", lambda: current_lock(cluster), timeout=60)
    held = current_lock(cluster)
    assert held is not None
    desired = load_cluster(cluster.config).model_dump(mode="json")
    url = f"{cluster.queen_url}/v1/apply"

    started = time.monotonic()
    refused = httpx.post(
        url,
        json={"cluster": desired, "lock_timeout_s": 0.5},
        headers=cluster.headers,
        timeout=30,
    )
    assert refused.status_code == 409
    assert time.monotonic() - started >= 0.5
    error = refused.json()["error"]
    assert error["code"] == "apply_locked"
    assert "(waited 1 s)" in error["message"] or "(waited 0 s)" in error["message"]
    assert held["id"] in error["message"]

    # A keeper that gives up while waiting (Ctrl-C) must not get its apply run later.
    abandoned = json.dumps({"cluster": desired, "lock_timeout_s": 120}).encode()
    with socket.create_connection(("127.0.0.1", cluster.queen_port)) as sock:
        sock.sendall(
            b"POST /v1/apply HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
            % (cluster.token.encode(), len(abandoned), abandoned)
        )
        time.sleep(0.3)

    events: list[dict[str, Any]] = []
    body = {"cluster": desired, "lock_timeout_s": 120}
    with httpx.stream("POST", url, json=body, headers=cluster.headers, timeout=180) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    first.communicate(timeout=60)
    assert first.returncode == 0
    lock_event, plan_event = events[0], events[1]
    assert lock_event["event"] == "lock" and lock_event["id"] != held["id"]
    assert plan_event["plan"]["actions"] == []  # it ran after the first apply, on its result
    assert events[-1]["event"] == "summary" and events[-1]["ok"]
    time.sleep(1)  # the abandoned request polls the lock every 0.25 s
    assert current_lock(cluster) is None
    assert [e["result"] for e in _history(cluster)] == ["ok", "ok"]  # not three


def test_keeper_killed_mid_apply_the_queen_finishes_the_apply(cluster: LocalCluster) -> None:
    keeper = spawn_rbee(cluster, "apply", "--auto-approve")
    wait_until("the worker to be spawned", lambda: hive_processes(cluster), timeout=120)
    assert current_lock(cluster) is not None, "the apply ended before the keeper was killed"
    keeper.kill()
    keeper.communicate(timeout=10)
    wait_until("the queen to finish the apply", lambda: current_lock(cluster) is None)
    [entry] = _history(cluster)
    assert entry["result"] == "ok"
    assert WORKER in entry["done"]
    _converged(cluster)


def test_queen_killed_mid_apply_next_apply_takes_over_the_stale_lock_and_converges(
    cluster: LocalCluster,
) -> None:
    held = _kill_queen_mid_apply(cluster)
    result = cluster.rbee("apply", "--auto-approve")  # starts a new queen
    assert "started local queen" in result.stderr
    assert "Apply complete!" in result.stdout
    log = (cluster.home / ".local/state/rbee/queen.log").read_text()
    assert f"event=stale_lock_taken_over lock_id={held['id']}" in log
    _converged(cluster)
    assert [e["result"] for e in _history(cluster)] == ["ok", "interrupted"]


def test_force_unlock_with_the_right_id_removes_the_lock_and_a_wrong_id_is_refused(
    cluster: LocalCluster,
) -> None:
    held = _kill_queen_mid_apply(cluster)
    cluster.rbee("queen", "start")
    left = current_lock(cluster)
    assert left is not None and left["id"] == held["id"] and left["stale"]

    wrong = _keeper(cluster, "force-unlock", "not-the-lock-id", check=False)
    assert wrong.returncode == 1
    assert "lock ID not-the-lock-id does not match the current lock" in wrong.stderr
    assert held["id"] in wrong.stderr and "Traceback" not in wrong.stderr
    assert current_lock(cluster) == left

    right = _keeper(cluster, "force-unlock", held["id"])
    assert f"Lock {held['id']} removed" in right.stdout
    assert current_lock(cluster) is None
    cluster.rbee("apply", "--auto-approve")
    assert "stale_lock_taken_over" not in (cluster.home / ".local/state/rbee/queen.log").read_text()
    _converged(cluster)


def test_history_lists_every_apply_with_its_result_and_what_failed(cluster: LocalCluster) -> None:
    cluster.rbee("apply", "--auto-approve")
    with_ghost = (
        cluster.config.read_text()
        .replace(
            "worker_binaries:",
            "  - name: ghost\n    source: file:///nonexistent/ghost.gguf\nworker_binaries:",
        )
        .replace(
            "deployments:",
            "deployments:\n  - model: ghost\n    worker: cpu\n    hives: [local]\n"
            "    replicas: 1\n    slots: 1\n    device: cpu\n    ctx_size: 512",
        )
    )
    cluster.config.write_text(with_ghost)
    failed = cluster.rbee("apply", "--auto-approve", check=False)
    assert failed.returncode == 1
    cluster.write(replicas=1)
    cluster.rbee("apply", "--auto-approve")

    newest, broken, first = _history(cluster)
    assert [newest["result"], broken["result"], first["result"]] == ["ok", "failed", "ok"]
    assert first["summary"] == {"add": 4, "change": 0, "destroy": 0}
    assert newest["summary"] == {"add": 0, "change": 0, "destroy": 0}
    assert list(broken["failed"]) == ["model.local.ghost"]
    assert "/nonexistent/ghost.gguf" in broken["failed"]["model.local.ghost"]
    assert broken["skipped"] == ["worker.local.ghost[0]"]
    assert f"{getpass.getuser()}@{socket.gethostname()}" in first["holder"]
    assert all(e["finished_at"] >= e["started_at"] for e in (newest, broken, first))

    table = _keeper(cluster, "history").stdout
    assert "model.local.ghost: " in table
    assert table.count(" ok ") + table.count(" ok\n") >= 2 and "failed" in table
    assert len(json.loads(_keeper(cluster, "history", "--json", "-n", "1").stdout)) == 1
