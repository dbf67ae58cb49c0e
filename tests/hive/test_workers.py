"""Worker processes: spawned by the hive, listed from the process table, stopped by pid."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from tests.fixtures.pki import client_tls, identity
from tests.fixtures.ports import free_port
from tests.hive.conftest import (
    MODEL,
    WORKER_START_S,
    Hive,
    HiveFactory,
    add_model,
    add_worker_binary,
    answers_health,
    hive_command,
    hive_env,
    is_gone,
    spawn,
    spawn_body,
    wait_until,
    workers_of,
)


@pytest.mark.slow
def test_a_spawned_worker_is_listed_and_serves_health(hive_with_model: Hive) -> None:
    hive = hive_with_model
    with hive.client() as client:
        worker = spawn(client, hive)
        listed = workers_of(client, hive)
        one = client.get(f"/v1/worker-processes/{worker['pid']}").json()
    assert listed == [worker]
    assert one == worker
    assert worker["worker_id"] == "w0"
    assert worker["hive"] == hive.name
    assert worker["model"] == MODEL
    assert (worker["worker_binary"], worker["slots"], worker["ctx_size"]) == ("cpu", 2, 512)
    assert worker["device"] == "cpu"
    assert worker["url"] == f"https://127.0.0.1:{worker['port']}"  # with the queen's identity
    assert Path(worker["identity"]).stat().st_mode & 0o777 == 0o600
    assert worker["started_at"] == psutil.Process(worker["pid"]).create_time()
    wait_until(lambda: answers_health(worker["url"]), WORKER_START_S, "the worker's /health")
    log = hive.home / ".local" / "state" / "rbee" / "workers" / "w0.log"
    assert log.is_file()


@pytest.mark.slow
def test_state_is_health_and_every_listing_in_one_answer(hive_with_model: Hive) -> None:
    hive = hive_with_model
    with hive.client() as client:
        worker = spawn(client, hive)
        state = client.get("/v1/state").json()
        listed = {
            "health": client.get("/health").json(),
            "models": client.get("/v1/models").json(),
            "worker_binaries": client.get("/v1/worker-binaries").json(),
            "workers": client.get("/v1/worker-processes").json(),
        }
        capabilities = client.get("/v1/capabilities").json()
    assert {key: state[key] for key in listed} == listed
    assert [m["name"] for m in state["models"]] == [MODEL]
    assert state["workers"] == [worker]
    # Capabilities move (free RAM): the same machine, not the same bytes.
    assert state["capabilities"].keys() == capabilities.keys()
    assert state["capabilities"]["hostname"] == capabilities["hostname"]


@pytest.mark.slow
def test_delete_stops_the_worker(hive_with_model: Hive) -> None:
    hive = hive_with_model
    with hive.client() as client:
        worker = spawn(client, hive)
        wait_until(lambda: answers_health(worker["url"]), WORKER_START_S, "the worker's /health")
        resp = client.delete(f"/v1/worker-processes/{worker['pid']}", params={"grace": 5})
        assert resp.status_code == 200
        assert resp.json()["pid"] == worker["pid"]
        assert is_gone(worker["pid"])
        assert workers_of(client, hive) == []
        assert client.delete(f"/v1/worker-processes/{worker['pid']}").status_code == 404


@pytest.mark.slow
def test_a_restarted_hive_still_lists_its_workers(start_hive: HiveFactory, gguf: Path) -> None:
    first = start_hive()
    with first.client() as client:
        assert add_model(client, MODEL, gguf)[-1]["state"] == "succeeded"
        assert add_worker_binary(client, "cpu")[-1]["state"] == "succeeded"
        worker = spawn(client, first)
    first.stop()
    assert not is_gone(worker["pid"]), "the worker died with its hive"
    second = start_hive()
    with second.client() as client:
        assert workers_of(client, second) == [worker]
        wait_until(lambda: answers_health(worker["url"]), WORKER_START_S, "the worker's /health")
        assert client.delete(f"/v1/worker-processes/{worker['pid']}").status_code == 200
    assert is_gone(worker["pid"])


def test_deleting_a_pid_that_is_no_worker_is_404_and_kills_nothing(hive: Hive) -> None:
    with hive.client() as client:
        mine = client.delete(f"/v1/worker-processes/{os.getpid()}", params={"grace": 0})
        theirs = client.delete(f"/v1/worker-processes/{hive.proc.pid}", params={"grace": 0})
        assert client.get(f"/v1/worker-processes/{os.getpid()}").status_code == 404
    assert mine.status_code == 404
    assert "not a running rbee worker" in mine.json()["error"]["message"]
    assert theirs.status_code == 404
    assert hive.proc.poll() is None


def test_spawning_a_model_not_in_the_catalog_is_404(hive: Hive) -> None:
    with hive.client() as client:
        resp = client.post("/v1/worker-processes", json=spawn_body(hive, "w", model="nope"))
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"


def test_an_mtls_hive_spawns_no_worker_without_its_tls_identity(hive_with_model: Hive) -> None:
    """A worker of an mTLS hive serves TLS with the identity the queen sent: never plain HTTP."""
    hive = hive_with_model
    body = {k: v for k, v in spawn_body(hive).items() if k != "tls_identity"}
    with hive.client() as client:
        resp = client.post("/v1/worker-processes", json=body)
        assert resp.status_code == 422
        assert "tls_identity" in resp.json()["error"]["message"]
        assert workers_of(client, hive) == []


def test_a_workers_log_tail_outlives_it_and_its_id_cannot_leave_the_log_directory(
    hive: Hive,
) -> None:
    logs = hive.home / ".local" / "state" / "rbee" / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "w9.log").write_text("".join(f"line {n}\n" for n in range(100)))
    with hive.client() as client:
        tail = client.get("/v1/worker-logs/w9", params={"lines": 3})
        none = client.get("/v1/worker-logs/never-ran")
        escape = client.get("/v1/worker-logs/..%2F..%2Fhive", params={"lines": 3})
        bad = client.get("/v1/worker-logs/w9", params={"lines": "all"})
    assert (tail.status_code, tail.text) == (200, "line 97\nline 98\nline 99\n")
    assert (none.status_code, none.text) == (200, "")
    assert escape.status_code in (404, 422)  # never a file outside the log directory
    assert bad.status_code == 422


def test_a_bad_grace_is_422(hive: Hive) -> None:
    with hive.client() as client:
        resp = client.delete(f"/v1/worker-processes/{os.getpid()}", params={"grace": "soon"})
    assert resp.status_code == 422


@pytest.mark.slow
def test_a_hive_lists_and_stops_only_workers_of_its_own_catalog(
    hive_with_model: Hive, tmp_path: Path
) -> None:
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    port = free_port()
    name = hive_with_model.name
    other = subprocess.Popen(
        hive_command(
            "--port", str(port), "--name", name, "--identity", str(identity("hive", name))
        ),
        env=hive_env(other_home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"https://127.0.0.1:{port}"
        wait_until(lambda: answers_health(url), 30, "the other hive")
        with hive_with_model.client() as client:
            worker = spawn(client, hive_with_model)
        verify = client_tls("queen", "queen")
        with httpx.Client(base_url=url, verify=verify, timeout=30) as stranger:
            assert stranger.get("/v1/worker-processes").json() == []
            assert stranger.delete(f"/v1/worker-processes/{worker['pid']}").status_code == 404
        assert not is_gone(worker["pid"])
    finally:
        other.terminate()
        other.wait(10)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in raw if b"=" in entry)


@pytest.mark.slow
def test_a_gpu_worker_sees_only_its_own_gpu(hive_with_model: Hive) -> None:
    hive = hive_with_model
    with hive.client() as client:
        gpu = spawn(client, hive, "w-gpu", device="cuda:1")
        cpu = spawn(client, hive, "w-cpu", device="cpu")
        try:
            assert _environ(gpu["pid"])["CUDA_VISIBLE_DEVICES"] == "1"
            assert "CUDA_VISIBLE_DEVICES" not in _environ(cpu["pid"])
            assert gpu["device"] == "cuda:1"  # what the plan compares is still the declared one
        finally:
            for worker in (gpu, cpu):
                client.delete(f"/v1/worker-processes/{worker['pid']}", params={"grace": 1})
