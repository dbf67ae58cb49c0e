"""Self-heal on real processes: the queen keeps the last applied cluster converged.

One cluster for the module (real `rbee` CLI, a detached queen, its hive and a llama-cpp-python
worker on the real Gemma 3 270M model), with a 2 s periodic check. The tests run in order;
each breaks one thing the way it breaks in life and waits for the queen to mend it, with no
apply in between.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.fixtures.cluster import LocalCluster, current_lock, kill_strays, new_cluster, wait_until

pytestmark = pytest.mark.slow

WORKER = "worker.local.gemma3-270m[0]"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[LocalCluster]:
    the_cluster = new_cluster(
        tmp_path_factory.mktemp("home"),
        gguf,
        # A worker that never beat for 8 s is silent: the restart tests below see the heal at
        # a queen's start meet workers older than that, which must be adopted, not replaced.
        self_heal="{interval: 2s, max_per_hour: 100, silent_after: 8s}",
    )
    the_cluster.rbee("apply", "--auto-approve")
    yield the_cluster
    the_cluster.rbee("down", check=False, timeout=60)
    kill_strays(the_cluster)


def _history(cluster: LocalCluster, limit: int = 20) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(
        cluster.rbee("history", "--json", "-n", str(limit)).stdout
    )
    return entries


def _heals(cluster: LocalCluster) -> list[dict[str, Any]]:
    return [e for e in _history(cluster) if e["kind"] == "self-heal"]


def _status(cluster: LocalCluster) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(cluster.rbee("status", "--json").stdout)
    return status


def _worker(cluster: LocalCluster) -> dict[str, Any]:
    """The one worker, once the queen has heard it is idle (a request's end is told within
    the heartbeat's nudge gap, half a second)."""

    def idle() -> list[dict[str, Any]]:
        workers = [w for w in cluster.wait_workers(1) if w["model"] == "gemma3-270m"]
        return workers if len(workers) == 1 and workers[0]["state"] == "idle" else []

    wait_until("the worker to be idle", lambda: bool(idle()), timeout=10)
    [worker] = idle()
    return worker


def _in_sync(cluster: LocalCluster, timeout: float = 30) -> None:
    wait_until(
        "the cluster to be in sync",
        lambda: _status(cluster)["sync"]["state"] == "in_sync",
        timeout=timeout,
    )


def test_a_hung_worker_is_replaced_and_a_ci_apply_waits_for_the_heals_lock(
    cluster: LocalCluster,
) -> None:
    hung = _worker(cluster)
    os.kill(hung["pid"], signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # Its heartbeats stop; the heal stops it (SIGTERM, then SIGKILL after the grace
        # period: it is frozen) and spawns another, holding the apply lock meanwhile.
        wait_until(
            "self-heal to take the apply lock",
            lambda: (current_lock(cluster) or {}).get("holder") == "self-heal",
            timeout=20,
        )
        refused = cluster.rbee("apply", "--auto-approve", "--lock-timeout", "0", check=False)
        assert refused.returncode == 1
        assert "self-heal is mending the cluster" in refused.stderr
        assert "held by self-heal" in refused.stderr and "Traceback" not in refused.stderr
        waited = cluster.rbee("apply", "--auto-approve", "--lock-timeout", "60")
        assert "No changes" in waited.stdout, waited.stdout
    finally:
        if psutil.pid_exists(hung["pid"]):
            os.kill(hung["pid"], signal.SIGKILL)
    replaced = _worker(cluster)
    assert replaced["pid"] != hung["pid"] and not psutil.pid_exists(hung["pid"])
    # Heartbeats are missed after 6 s; then a 5 s grace to stop it, and a fresh load.
    assert time.monotonic() - stopped < 25
    [heal] = [e for e in _heals(cluster) if WORKER in e["reasons"]]
    assert heal["result"] == "ok" and heal["done"] == [WORKER]
    assert "heartbeats stopped (hung)" in heal["reasons"][WORKER]
    # Set off by the missed heartbeats, or found by the periodic check (2 s here) first.
    assert "its heartbeats stopped" in heal["trigger"] or heal["trigger"] == "periodic check"


def _model_dir(cluster: LocalCluster) -> Path:
    return cluster.home / ".cache/rbee/models/gemma3-270m"


def _intact(cluster: LocalCluster) -> bool:
    """Whether the hive lists the model, undamaged (a replace deletes it for a while)."""
    with cluster.hive() as hive:
        models = hive.get("/v1/models", timeout=30).json()
    return any(m["name"] == "gemma3-270m" and m["damaged"] is None for m in models)


def test_a_deleted_model_file_is_fetched_again_and_the_worker_serves_on(
    cluster: LocalCluster,
) -> None:
    _in_sync(cluster)
    worker = _worker(cluster)
    before = len(_heals(cluster))
    payload = _model_dir(cluster) / "payload"
    payload.unlink()
    wait_until("the model file to be fetched again", payload.exists, timeout=60)
    wait_until("a clean listing", lambda: _intact(cluster), timeout=30)
    _in_sync(cluster)
    heal = _heals(cluster)[0]
    assert len(_heals(cluster)) == before + 1
    assert heal["done"] == ["model.local.gemma3-270m"]
    assert "payload is missing: fetch again" in heal["reasons"]["model.local.gemma3-270m"]
    # The worker maps the deleted file and serves on: it is not restarted for it.
    assert _worker(cluster)["pid"] == worker["pid"]
    assert cluster.chat("hello", max_tokens=4).status_code == 200


def test_a_model_file_changed_on_disk_is_fetched_again_and_its_worker_restarted(
    cluster: LocalCluster,
) -> None:
    worker = _worker(cluster)
    before = len(_heals(cluster))
    payload = _model_dir(cluster) / "payload"
    with payload.open("r+b") as file:  # same size, other bytes: only its sha256 tells
        file.seek(payload.stat().st_size // 2)
        file.write(b"\0" * 64)
    wait_until(
        "the changed file to be replaced",
        lambda: len(_heals(cluster)) > before and _heals(cluster)[0]["result"] != "running",
        timeout=60,
    )
    _in_sync(cluster)
    assert _intact(cluster)
    heal = _heals(cluster)[0]
    assert "no longer matches its sha256" in heal["reasons"]["model.local.gemma3-270m"]
    assert heal["done"] == ["model.local.gemma3-270m", WORKER]
    assert _worker(cluster)["pid"] != worker["pid"]
    assert cluster.chat("hello", max_tokens=4).status_code == 200


def _hive_pid(cluster: LocalCluster) -> int | None:
    try:
        with cluster.hive() as hive:
            health = hive.get("/health", timeout=2).json()
    except httpx.TransportError:
        return None
    return int(health["pid"])


def test_a_killed_hive_is_restarted_and_its_worker_adopted_not_duplicated(
    cluster: LocalCluster,
) -> None:
    worker = _worker(cluster)
    hive = _hive_pid(cluster)
    assert hive is not None
    os.kill(hive, signal.SIGKILL)
    killed = time.monotonic()
    wait_until("the hive to be back", lambda: _hive_pid(cluster) not in (None, hive), timeout=30)
    back = time.monotonic() - killed
    assert back < 30
    _in_sync(cluster)
    assert [w["pid"] for w in cluster.workers()] == [worker["pid"]]
    with cluster.hive() as hive:
        listed = hive.get("/v1/worker-processes").json()
    assert [p["pid"] for p in listed] == [worker["pid"]]
    heal = next(e for e in _heals(cluster) if "hive.local" in e["reasons"])
    assert heal["done"] == ["hive.local"]
    # Set off by whichever check ran first after the kill: the hive monitor's (every 5 s),
    # the periodic one (2 s here), or one an event started a moment before.
    assert heal["trigger"]


def _queen_pid(cluster: LocalCluster) -> int:
    pid: int = httpx.get(f"{cluster.queen_url}/health", timeout=5).json()["pid"]
    return pid


def test_the_queen_killed_and_restarted_as_its_unit_would_serves_within_5_s(
    cluster: LocalCluster,
) -> None:
    _worker(cluster)
    history = _history(cluster)
    errors: list[BaseException] = []

    def stream() -> None:
        body = {"model": "gemma3-270m", "prompt": "Once upon a time", "max_tokens": 400}
        try:
            with httpx.stream(
                "POST", f"{cluster.queen_url}/v1/completions", json={**body, "stream": True},
                headers=cluster.headers, timeout=30,
            ) as response:  # fmt: skip
                for _ in response.iter_bytes():
                    pass
        except httpx.TransportError as exc:
            errors.append(exc)

    client = threading.Thread(target=stream)
    client.start()
    time.sleep(1.0)  # the answer is streaming
    os.kill(_queen_pid(cluster), signal.SIGKILL)
    killed = time.monotonic()
    client.join(timeout=10)
    # The client in flight got a connection error at once, not a hang.
    assert not client.is_alive() and errors, "the client was not told the queen died"
    assert time.monotonic() - killed < 5

    restarted = cluster.restart_queen_as_its_unit_would()
    try:
        started = time.monotonic()
        while True:
            try:
                if cluster.chat("hello", max_tokens=4).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() - started < 5, "not serving within 5 s of the restart"
            time.sleep(0.1)
        assert _history(cluster) == history
        _in_sync(cluster)
    finally:
        assert psutil.pid_exists(restarted.pid)


def _live_count(cluster: LocalCluster) -> int | None:
    try:
        return len(cluster.workers())
    except httpx.TransportError:
        return None  # not listening yet


def test_five_queen_restarts_replace_no_healthy_worker(cluster: LocalCluster) -> None:
    """SIGKILL, then the unit's command or `rbee queen start`, five times: each new queen heals
    at once, before the worker's next heartbeat, and must adopt the worker, not replace it."""
    worker = _worker(cluster)
    assert time.time() - psutil.Process(worker["pid"]).create_time() > 8  # past silent_after
    heals = len(_heals(cluster))
    for restart in range(5):
        os.kill(_queen_pid(cluster), signal.SIGKILL)
        if restart % 2:
            cluster.rbee("queen", "start")
        else:
            cluster.restart_queen_as_its_unit_would()
        wait_until("the worker to beat to the new queen", lambda: _live_count(cluster) == 1)
        time.sleep(1)  # the start's heal has run (and, before the fix, began a replace)
    time.sleep(3)  # one more periodic check (2 s) after the last start
    assert [w["pid"] for w in cluster.workers()] == [worker["pid"]]
    assert psutil.pid_exists(worker["pid"])
    assert len(_heals(cluster)) == heals
    _in_sync(cluster)


def test_a_targeted_apply_widens_nothing_self_heal_builds(cluster: LocalCluster) -> None:
    """The YAML now wants two replicas, but the apply targets the model only: neither that
    queen nor the next one (restarted, reading the stored desired state) spawns replica 1."""
    [worker] = cluster.wait_workers(1)
    cluster.write(replicas=2)
    try:
        cluster.rbee("apply", "--auto-approve", "--target", "model.local.gemma3-270m")
        os.kill(_queen_pid(cluster), signal.SIGKILL)
        cluster.restart_queen_as_its_unit_would()
        wait_until("the worker to beat to the new queen", lambda: _live_count(cluster) == 1)
        time.sleep(3)  # the start's heal and a periodic one have run
        assert [w["pid"] for w in cluster.workers()] == [worker["pid"]]
        assert _status(cluster)["sync"]["state"] == "in_sync"
    finally:
        cluster.write(replicas=1)


def test_a_worker_that_crashes_at_load_is_left_down_after_three_tries(
    cluster: LocalCluster,
) -> None:
    broken = cluster.home / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\3\0\0\0" + os.urandom(1 << 16))  # a header, then noise
    good = cluster.config.read_text()
    cluster.config.write_text(
        good.replace(
            "worker_binaries:",
            f"  - name: broken\n    source: file://{broken}\nworker_binaries:",
        ).replace(
            "deployments:",
            "deployments:\n  - model: broken\n    worker: cpu\n    hives: [local]\n"
            "    replicas: 1\n    slots: 1\n    device: cpu\n    ctx_size: 512",
        )
    )
    try:
        apply = cluster.rbee("apply", "--auto-approve", check=False)
        assert apply.returncode == 1
        assert "exited while starting" in apply.stdout + apply.stderr
        wait_until(
            "self-heal to give up on the broken worker",
            lambda: _status(cluster)["sync"]["crash_loops"],
            timeout=90,
        )
        status = _status(cluster)
        assert status["sync"]["state"] == "degraded"
        [loop] = status["sync"]["crash_loops"]
        assert (loop["worker_id"], loop["deaths"]) == ("local.broken.0", 3)
        assert "exited while starting" in (loop["error"] or "")
        assert loop["log_tail"].strip(), "the crash loop comes with its last log lines"
        tries = [e for e in _heals(cluster) if "worker.local.broken[0]" in e["reasons"]]
        assert len(tries) == 3 and all(e["result"] == "failed" for e in tries)
        text = cluster.rbee("status").stdout
        assert "sync   degraded" in text and "crash loop: local.broken.0 on local" in text
        metrics = cluster.get("/metrics", timeout=5).text
        assert 'rbee_queen_crash_looping_workers{hive="local",worker="local.broken.0"} 1.0' in (
            metrics
        )
        assert 'rbee_queen_sync_state{state="degraded"} 1.0' in metrics
        time.sleep(6)  # three checks later: still left down
        assert len([e for e in _heals(cluster) if "worker.local.broken[0]" in e["reasons"]]) == 3
        assert cluster.chat("hello", max_tokens=4).status_code == 200  # the rest serves on
    finally:
        cluster.config.write_text(good)
    cluster.rbee("apply", "--auto-approve")
    _in_sync(cluster)
    assert _status(cluster)["sync"]["crash_loops"] == []


def test_down_suspends_self_heal_until_the_next_apply(cluster: LocalCluster) -> None:
    cluster.rbee("down", timeout=60)
    cluster.rbee("queen", "start")
    time.sleep(5)  # two periodic checks: nothing is started again
    status = _status(cluster)
    assert status["sync"]["state"] == "suspended"
    assert "`rbee down`" in status["sync"]["reasons"][0]
    assert status["workers"] == [] and _hive_pid(cluster) is None
    cluster.rbee("apply", "--auto-approve")
    _worker(cluster)
    _in_sync(cluster)
