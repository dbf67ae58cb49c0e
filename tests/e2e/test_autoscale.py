"""Elastic workers on real processes: a range of replicas scaled by the queen.

One cluster for the module (real `rbee` CLI, a detached queen, its hive and llama-cpp-python
workers on the real Gemma 3 270M model, self-heal off so only the autoscaler acts), with
`replicas: {min: 0, max: N}`, one slot a worker and `idle_ttl: 6s`. The tests run in order;
each starts from no worker (the last one's was retired or evicted) and ends the same way.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import (
    LocalCluster,
    hive_processes,
    kill_strays,
    new_cluster,
    spawn_rbee,
    wait_until,
)

pytestmark = pytest.mark.slow

WORKER = "local.gemma3-270m.0"


def _elastic(cluster: LocalCluster, most: int) -> None:
    """Write the YAML with `replicas: {min: 0, max: most}`, 1 slot, `idle_ttl: 6s`, and apply."""
    cluster.write(slots=1)
    text = cluster.config.read_text()
    assert "    replicas: 1\n" in text
    elastic = f"    replicas: {{min: 0, max: {most}}}\n    idle_ttl: 6s\n"
    cluster.config.write_text(text.replace("    replicas: 1\n", elastic))
    cluster.rbee("apply", "--auto-approve")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[LocalCluster]:
    the_cluster = new_cluster(tmp_path_factory.mktemp("home"), gguf, self_heal="false")
    _elastic(the_cluster, most=2)
    yield the_cluster
    the_cluster.rbee("down", check=False, timeout=60)
    kill_strays(the_cluster)


def _no_worker(cluster: LocalCluster) -> None:
    wait_until("no live worker", lambda: not cluster.workers(), timeout=30)
    wait_until("no worker process", lambda: not hive_processes(cluster), timeout=30)


def _plan_exit(cluster: LocalCluster) -> tuple[int, str]:
    result = cluster.rbee("plan", "--detailed-exitcode", check=False)
    return result.returncode, result.stdout


def test_a_range_from_zero_starts_no_worker_and_plans_no_changes(cluster: LocalCluster) -> None:
    assert cluster.workers() == [] and hive_processes(cluster) == []
    code, text = _plan_exit(cluster)
    assert code == 0, text
    assert "worker.local.gemma3-270m  replicas 0..2 (0 live)" in text


def test_the_first_request_spawns_a_worker_and_is_answered_by_it(cluster: LocalCluster) -> None:
    response = cluster.chat("Hello", max_tokens=8)
    assert response.status_code == 200, response.text
    assert response.headers["x-rbee-worker"] == WORKER
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    [process] = hive_processes(cluster)
    assert process["worker_id"] == WORKER
    [listed] = json.loads(cluster.rbee("worker", "list", "--json").stdout)
    assert (listed["worker_id"], listed["state"], listed["pid"]) == (WORKER, "idle", process["pid"])
    assert listed["idle_s"] is not None
    assert WORKER in cluster.rbee("worker", "get", WORKER).stdout
    code, text = _plan_exit(cluster)  # 1 live is within 0..2: in sync
    assert code == 0, text
    assert "replicas 0..2 (1 live)" in text


def test_an_idle_worker_is_stopped_after_idle_ttl_and_plan_stays_in_sync(
    cluster: LocalCluster,
) -> None:
    _no_worker(cluster)  # the worker of the test before: idle for 6 s, then stopped
    code, text = _plan_exit(cluster)
    assert code == 0, text
    assert "replicas 0..2 (0 live)" in text
    metrics = cluster.get("/metrics", timeout=5).text
    assert 'rbee_queen_workers_retired_total{model="gemma3-270m",reason="idle"} 1.0' in metrics


def test_requests_at_once_spawn_no_more_workers_than_max(cluster: LocalCluster) -> None:
    _elastic(cluster, most=1)
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda n: cluster.chat(f"Count to {n}", max_tokens=8), range(4)))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert {r.headers["x-rbee-worker"] for r in responses} == {WORKER}
    metrics = cluster.get("/metrics", timeout=5).text
    # One from the test before, one here: four requests at once on max 1 spawned one.
    assert 'rbee_queen_scale_ups_total{model="gemma3-270m",result="ok"} 2.0' in metrics
    assert len(hive_processes(cluster)) == 1
    _no_worker(cluster)


def test_retire_drains_a_stream_to_its_end_then_stops_the_worker(cluster: LocalCluster) -> None:
    body = {
        "model": "gemma3-270m",
        "messages": [{"role": "user", "content": "Tell me a long story"}],
        "max_tokens": 128,
        "stream": True,
    }
    events: list[str] = []
    first = threading.Event()

    def stream() -> None:
        url = f"{cluster.queen_url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, headers=cluster.headers, timeout=120) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(120), "no first chunk"
    retire = spawn_rbee(cluster, "worker", "retire", WORKER, "--wait")
    out, err = retire.communicate(timeout=120)
    reader.join(120)
    assert retire.returncode == 0, err
    assert f"worker {WORKER}" in out and "is draining (1 in flight)" in out, out
    assert f"worker {WORKER} stopped" in out
    # The stream ran to its end: a finish reason, then [DONE], and no error event.
    assert events[-1] == "[DONE]"
    chunks: list[dict[str, Any]] = [json.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert cluster.workers() == [] and hive_processes(cluster) == []


def test_retiring_an_unknown_worker_is_one_red_line(cluster: LocalCluster) -> None:
    result = cluster.rbee("worker", "retire", "local.nope.0", check=False)
    assert result.returncode == 1
    assert "no live worker 'local.nope.0'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_retired_worker_of_a_fixed_count_is_spawned_again_by_the_next_apply(
    cluster: LocalCluster,
) -> None:
    cluster.write(replicas=1, slots=1)
    cluster.rbee("apply", "--auto-approve")
    [before] = cluster.wait_workers(1)
    cluster.rbee("worker", "retire", WORKER, "--wait")
    assert cluster.workers() == [] and hive_processes(cluster) == []
    code, text = _plan_exit(cluster)
    assert code == 2 and "+ worker.local.gemma3-270m[0]" in text, text
    cluster.rbee("apply", "--auto-approve")
    [after] = cluster.wait_workers(1)
    assert after["worker_id"] == WORKER and after["pid"] != before["pid"]
