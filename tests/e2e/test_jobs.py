"""The job API end to end: a real queen, hive and llama-cpp-python worker on the real Gemma 3
270M model, with one slot, so that jobs visibly wait their turn.

The tests of this module run in order against one cluster (self-heal off: nothing acts behind
them). A long job is a count the base model keeps going for its whole `max_tokens`; it holds
the only slot while a test queues others behind it, and is cancelled (or killed with the queen)
when the test has seen what it needs.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.cluster import (
    LocalCluster,
    applied_cluster,
    wait_until,
)

pytestmark = pytest.mark.slow

MODEL = "gemma3-270m"
COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
SHORT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Name three colours."}],
    "max_tokens": 4,
    "temperature": 0,
}


def _long(max_tokens: int = 1000) -> dict[str, Any]:
    return {"model": MODEL, "prompt": COUNT, "max_tokens": max_tokens, "temperature": 0}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[LocalCluster]:
    home = tmp_path_factory.mktemp("home")
    with applied_cluster(home, gguf, declare=lambda c: c.write(slots=1)) as the_cluster:
        yield the_cluster


def _submit(cluster: LocalCluster, body: dict[str, Any], priority: str) -> str:
    response = httpx.post(
        f"{cluster.queen_url}/v1/jobs",
        json={**body, "priority": priority},
        headers=cluster.headers,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    assert response.json()["sse_url"] == f"/v1/jobs/{job_id}/events"
    return job_id


def _job(cluster: LocalCluster, job_id: str) -> dict[str, Any]:
    response = cluster.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def _events(cluster: LocalCluster, job_id: str) -> list[dict[str, Any]]:
    """The job's events from its first to its end (the stream closes there)."""
    url = f"{cluster.queen_url}/v1/jobs/{job_id}/events"
    timeout = httpx.Timeout(10, read=120)
    with httpx.stream("GET", url, headers=cluster.headers, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


def _cancel(cluster: LocalCluster, job_id: str) -> dict[str, Any]:
    response = httpx.delete(
        f"{cluster.queen_url}/v1/jobs/{job_id}", headers=cluster.headers, timeout=10
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def _running(cluster: LocalCluster, job_id: str) -> None:
    wait_until(f"job {job_id} to run", lambda: _job(cluster, job_id)["state"] == "running")


def _all_ended(cluster: LocalCluster, ids: list[str], timeout: float = 120) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []

    def ended() -> bool:
        jobs[:] = [_job(cluster, job_id) for job_id in ids]
        return all(job["state"] in ("done", "failed", "cancelled") for job in jobs)

    wait_until(f"{len(ids)} jobs to end", ended, timeout=timeout)
    return jobs


def _text(chunk: dict[str, Any]) -> str:
    choice = chunk["choices"][0]
    text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
    return text or ""


def test_a_job_streams_queued_assigned_first_token_its_chunks_then_done(
    cluster: LocalCluster,
) -> None:
    job_id = _submit(cluster, {**SHORT, "max_tokens": 12}, "interactive")
    events = _events(cluster, job_id)
    kinds = [event["event"] for event in events]
    assert kinds[:3] == ["queued", "assigned", "first_token"], kinds
    assert set(kinds[3:-1]) == {"chunk"} and kinds[-1] == "done", kinds
    assert events[0]["position"] == 1
    assert events[1] == {"event": "assigned", "worker": "local.gemma3-270m.0", "run": 1}
    streamed = "".join(_text(event["chunk"]) for event in events if event["event"] == "chunk")
    result = events[-1]["result"]
    assert result["text"] == streamed and streamed.strip()
    job = _job(cluster, job_id)
    assert job["state"] == "done" and job["runs"] == 1 and job["result"] == result
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    # Greedy sampling: the job's answer is the one a plain request gets.
    body = {**SHORT, "max_tokens": 12}
    direct = httpx.post(
        f"{cluster.queen_url}/v1/chat/completions", json=body, headers=cluster.headers, timeout=60
    )
    assert direct.json()["choices"][0]["message"]["content"] == result["text"]


def test_a_queued_job_and_a_running_one_are_cancelled(cluster: LocalCluster) -> None:
    running = _submit(cluster, _long(), "batch")
    _running(cluster, running)
    queued = _submit(cluster, SHORT, "batch")
    assert _job(cluster, queued)["position"] == 1

    assert _cancel(cluster, queued)["state"] == "cancelled"
    assert [e["event"] for e in _events(cluster, queued)] == ["queued", "error"]
    assert _cancel(cluster, running)["state"] == "cancelled"
    [*_, last] = _events(cluster, running)
    assert last == {"event": "error", "state": "cancelled", "message": "cancelled by a client"}
    # The worker stopped generating: its one slot is free long before 1000 tokens.
    wait_until("the worker's slot to be free", lambda: cluster.workers()[0]["slots_busy"] == 0, 15)
    jobs = {job_id: _job(cluster, job_id) for job_id in (running, queued)}
    assert jobs[running]["runs"] == 1 and jobs[running]["result"] is None
    assert jobs[queued]["runs"] == 0 and jobs[queued]["started_at"] is None
    # An ended job stays as it ended.
    again = httpx.delete(
        f"{cluster.queen_url}/v1/jobs/{queued}", headers=cluster.headers, timeout=10
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_ended"


def test_interactive_requests_go_before_batch_jobs_and_each_priority_is_fifo(
    cluster: LocalCluster,
) -> None:
    blocker = _submit(cluster, _long(), "batch")
    _running(cluster, blocker)
    batch = [_submit(cluster, SHORT, "batch") for _ in range(3)]
    interactive = [_submit(cluster, SHORT, "interactive") for _ in range(2)]
    assert [_job(cluster, job_id)["position"] for job_id in interactive + batch] == [1, 2, 3, 4, 5]
    # A plain OpenAI request is interactive too: it waits in front of the batch jobs.
    first_byte: list[float] = []
    plain = threading.Thread(target=_stream_chat, args=(cluster, first_byte))
    plain.start()
    wait_until("the plain request to queue", lambda: _queue_depth(cluster) == 2)

    _cancel(cluster, blocker)
    jobs = _all_ended(cluster, interactive + batch)
    plain.join(60)
    assert all(job["state"] == "done" for job in jobs)
    started = [job["job_id"] for job in sorted(jobs, key=lambda job: job["started_at"])]
    assert started == interactive + batch
    assert first_byte and first_byte[0] < _job(cluster, batch[0])["started_at"]


def test_twenty_batch_jobs_survive_a_sigkilled_queen_and_each_runs_to_done_once(
    cluster: LocalCluster,
) -> None:
    busy = _submit(cluster, _long(120), "interactive")  # still running when the queen dies
    _running(cluster, busy)
    batch = [_submit(cluster, SHORT, "batch") for _ in range(20)]
    queen = psutil.Process(httpx.get(f"{cluster.queen_url}/health", timeout=5).json()["pid"])
    os.kill(queen.pid, signal.SIGKILL)
    queen.wait(10)
    at_kill = _stored(cluster, [busy, *batch])
    assert at_kill[busy][:2] == ("running", 1)
    assert sum(state == "queued" for state, _, _ in at_kill.values()) >= 15, at_kill

    cluster.rbee("queen", "start")
    jobs = {job["job_id"]: job for job in _all_ended(cluster, [busy, *batch], timeout=180)}
    assert {job["state"] for job in jobs.values()} == {"done"}
    stored = _stored(cluster, [busy, *batch])
    for job_id, (state, runs, result) in at_kill.items():
        # The documented rule: a job running when its queen died is run once more.
        assert stored[job_id][1] == {"queued": 1, "running": runs + 1, "done": runs}[state]
        if state == "done":
            assert stored[job_id][2] == result  # its one result, never replaced
    assert all(result is not None for _, _, result in stored.values())


def test_rbee_job_submit_get_list_and_cancel(cluster: LocalCluster, tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"prompt": "The capital of France is", "temperature": 0}))
    waited = cluster.rbee(
        "job", "submit", "--body", str(request), "--max-tokens", "6", "--wait", "--json"
    )
    done = json.loads(waited.stdout)
    assert done["state"] == "done" and done["kind"] == "completion" and done["model"] == MODEL
    assert done["result"]["text"].strip()

    job_id = cluster.rbee("job", "submit", "Name a fruit.", "--max-tokens", "4").stdout.strip()
    wait_until("the job to end", lambda: _job(cluster, job_id)["state"] == "done")
    shown = cluster.rbee("job", "get", job_id).stdout
    assert job_id in shown and "done" in shown
    assert _job(cluster, job_id)["result"]["text"] in shown
    listed = json.loads(cluster.rbee("job", "list", "--state", "done", "--json").stdout)
    assert {done["job_id"], job_id} <= {job["job_id"] for job in listed}

    blocker = _submit(cluster, _long(), "batch")
    _running(cluster, blocker)
    queued = _submit(cluster, SHORT, "batch")
    assert cluster.rbee("job", "cancel", queued).stdout.strip() == f"cancelled {queued}"
    _cancel(cluster, blocker)

    refused = cluster.rbee("job", "cancel", job_id, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"job {job_id} has ended already (done)" in refused.stderr
    missing = cluster.rbee("job", "get", "job-nope", check=False)
    assert missing.returncode == 1 and "no job 'job-nope'" in missing.stderr
    nothing = cluster.rbee("job", "submit", check=False)
    assert nothing.returncode == 1 and "give a PROMPT or --body FILE" in nothing.stderr


def _stream_chat(cluster: LocalCluster, first_byte: list[float]) -> None:
    body = {**SHORT, "stream": True}
    url = f"{cluster.queen_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=cluster.headers, timeout=60) as response:
        assert response.status_code == 200
        for _ in response.iter_bytes():
            first_byte.append(time.time())


def _queue_depth(cluster: LocalCluster) -> float:
    text = cluster.get("/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rbee_queen_queue_depth" and sample.labels["model"] == MODEL:
                return float(sample.value)
    return 0.0


def _stored(cluster: LocalCluster, ids: list[str]) -> dict[str, tuple[str, int, str | None]]:
    """Each job's row in the queen's SQLite: state, runs, stored result."""
    db = sqlite3.connect(cluster.home / ".local/state/rbee/queen.db")
    try:
        rows = db.execute(
            f"SELECT id, state, runs, result FROM jobs WHERE id IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
    finally:
        db.close()
    assert len(rows) == len(ids)  # one row, so one stored result, per job id
    return {job_id: (state, runs, result) for job_id, state, runs, result in rows}
