"""Jobs, isolated: the queue order in admission, the retention of ended jobs, and a real queen
process in front of scripted workers for what a real model cannot be told to do (fail before
its first byte, die mid-answer). The real model's path is tests/e2e/test_jobs.py.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rbee.config.models import Serving
from rbee.queen.control.job_table import JobTable
from rbee.queen.control.store import Store
from rbee.queen.serve.admission import Admission
from rbee.queen.serve.registry import Registry
from rbee.wire import Heartbeat
from rbee.wire.jobs import EmbeddingResult, JobRecord, JobResult
from tests.fixtures.scripted import MODEL, TOKENS, ScriptedQueen, ScriptedWorkers, scripted_workers

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedWorkers]:
    yield from scripted_workers()


@pytest.fixture
def queen(tmp_path: Path) -> Iterator[ScriptedQueen]:
    started = ScriptedQueen.start(tmp_path, {"attempts": 2, "queue_timeout": 5})
    yield started
    started.stop()


def test_a_freed_slot_goes_to_interactive_waiters_before_batch_ones_fifo_within_each() -> None:
    async def scenario() -> list[str]:
        registry = Registry()
        registry.beat(
            Heartbeat(
                worker_id="w",
                hive="local",
                model=MODEL,
                worker_binary="cpu",
                url="http://127.0.0.1:9",
                pid=1,
                device="cpu",
                state="idle",
                slots_total=1,
                slots_busy=0,
            )
        )
        admission = Admission(registry)
        loop = asyncio.get_running_loop()
        held = await admission.acquire(MODEL, Serving(), loop.time() + 5)
        served: list[str] = []

        async def wait(name: str, priority: Any) -> None:
            slot = await admission.acquire(MODEL, Serving(), loop.time() + 5, priority=priority)
            served.append(name)
            admission.release(slot)

        names = [("b1", "batch"), ("i1", "interactive"), ("b2", "batch"), ("i2", "interactive")]
        waiters = [asyncio.create_task(wait(name, priority)) for name, priority in names]
        while sum(admission.depths().values()) < len(waiters):
            await asyncio.sleep(0)
        admission.release(held)
        await asyncio.gather(*waiters)
        return served

    assert asyncio.run(scenario()) == ["i1", "i2", "b1", "b2"]


def test_ended_jobs_go_after_the_retention_or_beyond_the_newest_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "queen.db")  # makes the table
    table = JobTable(store.path)
    now = time.time()
    for index, (state, finished) in enumerate(
        [
            ("done", now - 100),
            ("failed", now - 50),
            ("done", now - 10),
            ("done", now - 5),
            ("queued", None),
            ("running", None),
        ]
    ):
        record = JobRecord(
            job_id=f"job-{index}",
            priority="batch",
            model=MODEL,
            kind="chat",
            state="queued",
            runs=0,
            created_at=now - 200,
        )
        table.insert(record, BODY)
        if finished is not None:
            table.ended(record.model_copy(update={"state": state, "finished_at": finished}))
        elif state == "running":
            table.started(record.model_copy(update={"state": state, "runs": 1}))
    assert table.prune(finished_before=now - 60, keep=100) == 1  # job-0: ended 100 s ago
    assert table.prune(finished_before=now - 3600, keep=2) == 1  # job-1: the third newest
    assert [r.job_id for r in table.recent(None, 10)] == [f"job-{i}" for i in (5, 4, 3, 2)]
    # A queen that starts queues the running job again, after the one queued before it.
    assert [row.record.job_id for row in table.unfinished()] == ["job-4", "job-5"]
    assert table.get("job-5") == table.unfinished()[1].record
    table.close()
    store.close()


def test_a_job_whose_worker_fails_before_its_first_byte_runs_on_another(
    queen: ScriptedQueen, scripted: ScriptedWorkers
) -> None:
    queen.add_worker("bad", scripted.worker("fail:500"))
    queen.add_worker("good", scripted.worker("ok"))
    _, events = _run(queen, BODY)
    assigned = [e["worker"] for e in events if e["event"] == "assigned"]
    assert assigned == ["bad", "good"]
    assert events[-1] == {
        "event": "done",
        "result": {"text": "".join(TOKENS), "finish_reason": "stop", "completion_tokens": 5},
    }
    assert queen.listed()["bad"]["healthy"] is False


def test_a_worker_that_dies_mid_answer_ends_the_job_with_an_error_event(
    queen: ScriptedQueen, scripted: ScriptedWorkers
) -> None:
    queen.add_worker("crashing", scripted.worker("crash-after"))
    job_id, events = _run(queen, BODY)
    assert [e["event"] for e in events] == [
        "queued",
        "assigned",
        "first_token",
        "chunk",
        "chunk",
        "error",
    ]
    assert events[-1]["state"] == "failed"
    assert "the worker failed mid-answer" in events[-1]["message"]
    job = httpx.get(f"{queen.url}/v1/jobs/{job_id}", headers=queen.headers, timeout=5).json()
    assert job["state"] == "failed" and job["result"] is None


def test_jobs_need_an_inference_key_as_the_openai_routes_do(
    queen: ScriptedQueen, scripted: ScriptedWorkers
) -> None:
    queen.add_worker("w", scripted.worker("ok"))
    created = httpx.post(
        f"{queen.url}/v1/keys", json={"name": "app"}, headers=queen.headers, timeout=5
    ).json()
    job = {**BODY, "priority": "interactive"}
    assert httpx.post(f"{queen.url}/v1/jobs", json=job, timeout=5).status_code == 401
    auth = {"authorization": f"Bearer {created['key']}"}
    response = httpx.post(f"{queen.url}/v1/jobs", json=job, headers=auth, timeout=5)
    assert response.status_code == 201
    job_id = response.json()["job_id"]
    assert httpx.get(f"{queen.url}/v1/jobs/{job_id}", headers=auth, timeout=5).status_code == 200
    assert httpx.get(f"{queen.url}/v1/keys", headers=auth, timeout=5).status_code == 403


def _run(queen: ScriptedQueen, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Submit a job and read its events to the end: its id and its events."""
    response = httpx.post(f"{queen.url}/v1/jobs", json=body, headers=queen.headers, timeout=5)
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    url = f"{queen.url}/v1/jobs/{job_id}/events"
    with httpx.stream("GET", url, headers=queen.headers, timeout=30) as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data:")]
    return job_id, events


def test_a_job_belongs_to_the_key_that_made_it(
    queen: ScriptedQueen, scripted: ScriptedWorkers
) -> None:
    """Another inference key gets 404 for it (get, events, cancel) and never lists it; the
    key that made it and admin keys see it."""
    queen.add_worker("w", scripted.worker("ok"))

    def key(name: str, scope: str, by: dict[str, str]) -> dict[str, str]:
        body = {"name": name, "scope": scope}
        made = httpx.post(f"{queen.url}/v1/keys", json=body, headers=by, timeout=5).json()
        return {"authorization": f"Bearer {made['key']}"}

    admin = key("ops", "admin", queen.headers)
    alice, bob = key("alice", "inference", admin), key("bob", "inference", admin)
    job = {**BODY, "priority": "batch"}
    job_id = httpx.post(f"{queen.url}/v1/jobs", json=job, headers=alice, timeout=5).json()["job_id"]
    url = f"{queen.url}/v1/jobs/{job_id}"
    for method, path in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
        refused = httpx.request(method, url + path, headers=bob, timeout=5)
        assert refused.status_code == 404, (method, path, refused.text)
        assert refused.json()["error"]["code"] == "job_not_found"
    listed = httpx.get(f"{queen.url}/v1/jobs", headers=bob, timeout=5).json()["jobs"]
    assert listed == []
    mine = httpx.get(url, headers=alice, timeout=5).json()
    assert (mine["job_id"], mine["owner"]) == (job_id, "alice")
    for who in (alice, admin):
        jobs = httpx.get(f"{queen.url}/v1/jobs", headers=who, timeout=5).json()["jobs"]
        assert [j["job_id"] for j in jobs] == [job_id]
    assert httpx.get(url, headers=admin, timeout=5).status_code == 200


def test_a_keys_rpm_and_tpm_hold_for_its_jobs_too(
    queen: ScriptedQueen, scripted: ScriptedWorkers
) -> None:
    """Jobs were a way around a key's limits: each counts as a request, its answer's tokens
    against the key's tokens a minute."""
    queen.add_worker("w", scripted.worker("ok"))
    admin = {
        "authorization": "Bearer "
        + httpx.post(
            f"{queen.url}/v1/keys", json={"name": "ops", "scope": "admin"}, headers=queen.headers
        ).json()["key"]
    }

    def key(name: str, **limits: int) -> dict[str, str]:
        body = {"name": name, **limits}
        made = httpx.post(f"{queen.url}/v1/keys", json=body, headers=admin, timeout=5).json()
        return {"authorization": f"Bearer {made['key']}"}

    job = {**BODY, "priority": "batch"}
    by_count = key("counted", rpm=2)
    answers = [
        httpx.post(f"{queen.url}/v1/jobs", json=job, headers=by_count, timeout=5) for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert answers[2].json()["error"]["code"] == "rate_limit_exceeded"
    assert int(answers[2].headers["retry-after"]) >= 1
    # One answer of len(TOKENS) tokens spends a tpm of 2: the next job must wait.
    by_tokens = key("metered", tpm=2)
    first = httpx.post(f"{queen.url}/v1/jobs", json=job, headers=by_tokens, timeout=5).json()
    url = f"{queen.url}/v1/jobs/{first['job_id']}"
    deadline = time.monotonic() + 20
    while httpx.get(url, headers=by_tokens, timeout=5).json()["state"] != "done":
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.05)
    assert len(TOKENS) > 2
    late = httpx.post(f"{queen.url}/v1/jobs", json=job, headers=by_tokens, timeout=5)
    assert late.status_code == 429, late.text


def test_a_job_sent_again_with_its_idempotency_key_is_the_same_job(queen: ScriptedQueen) -> None:
    """A client whose answer was lost sends the job again: one job, its id answered twice. The
    key is its sender's: another key's job with the same Idempotency-Key is its own."""

    def key(name: str, scope: str, by: dict[str, str]) -> dict[str, str]:
        body = {"name": name, "scope": scope}
        made = httpx.post(f"{queen.url}/v1/keys", json=body, headers=by, timeout=5).json()
        return {"authorization": f"Bearer {made['key']}"}

    admin = key("ops", "admin", queen.headers)
    alice, bob = key("alice", "inference", admin), key("bob", "inference", admin)
    job = {**BODY, "priority": "batch"}

    def submit(who: dict[str, str]) -> httpx.Response:
        headers = {**who, "idempotency-key": "order-42"}
        return httpx.post(f"{queen.url}/v1/jobs", json=job, headers=headers, timeout=5)

    first, again, bobs = submit(alice), submit(alice), submit(bob)
    assert [r.status_code for r in (first, again, bobs)] == [201, 201, 201]
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert bobs.json()["job_id"] != first.json()["job_id"]
    jobs = httpx.get(f"{queen.url}/v1/jobs", headers=admin, timeout=5).json()["jobs"]
    assert sorted((j["owner"], j["job_id"]) for j in jobs) == [
        ("alice", first.json()["job_id"]),
        ("bob", bobs.json()["job_id"]),
    ]


def test_an_idempotency_key_sent_with_another_request_is_refused(queen: ScriptedQueen) -> None:
    headers = {**queen.headers, "idempotency-key": "order-42"}
    first = httpx.post(f"{queen.url}/v1/jobs", json=BODY, headers=headers, timeout=5)
    assert first.status_code == 201, first.text
    other = {**BODY, "messages": [{"role": "user", "content": "something else"}]}
    refused = httpx.post(f"{queen.url}/v1/jobs", json=other, headers=headers, timeout=5)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "'order-42'" in error["message"] and first.json()["job_id"] in error["message"]
    interactive = {**BODY, "priority": "interactive"}
    again = httpx.post(f"{queen.url}/v1/jobs", json=interactive, headers=headers, timeout=5)
    assert again.status_code == 422, again.text
    listed = httpx.get(f"{queen.url}/v1/jobs", headers=queen.headers, timeout=5)
    assert len(listed.json()["jobs"]) == 1


@pytest.mark.parametrize(
    "value",
    [b"k" * 256, b"", "caf\u00e9".encode(), b"tab\there"],
    ids=["too long", "empty", "not ASCII", "a control character"],
)
def test_an_idempotency_key_that_is_not_printable_ascii_is_a_400(
    queen: ScriptedQueen, value: bytes
) -> None:
    headers = [
        (b"idempotency-key", value),
        *((k.encode(), v.encode()) for k, v in queen.headers.items()),
    ]
    refused = httpx.post(f"{queen.url}/v1/jobs", json=BODY, headers=headers, timeout=5)
    assert refused.status_code == 400, refused.text
    assert "Idempotency-Key" in refused.json()["error"]["message"]
    listed = httpx.get(f"{queen.url}/v1/jobs", headers=queen.headers, timeout=5)
    assert listed.json()["jobs"] == []


def test_an_insert_with_an_idempotency_key_its_owner_used_gives_the_first_job_back(
    tmp_path: Path,
) -> None:
    """What two submissions with one key that cross each other get: one row, the first."""
    store = Store(tmp_path / "queen.db")
    table = JobTable(store.path)

    def record(job_id: str, owner: str) -> JobRecord:
        return JobRecord(
            job_id=job_id,
            priority="batch",
            model=MODEL,
            kind="chat",
            state="queued",
            runs=0,
            created_at=time.time(),
            owner=owner,
        )

    assert table.insert(record("job-1", "alice"), BODY, "order-42") is None
    earlier = table.insert(record("job-2", "alice"), BODY, "order-42")
    assert earlier is not None and (earlier.record.job_id, earlier.body) == ("job-1", BODY)
    assert table.insert(record("job-3", "bob"), BODY, "order-42") is None
    assert table.insert(record("job-4", "alice"), BODY) is None
    assert [r.job_id for r in table.recent(None, 10)] == ["job-4", "job-3", "job-1"]
    table.close()
    store.close()


def test_a_database_from_before_embedding_jobs_keeps_its_jobs_and_takes_embedding_ones(
    tmp_path: Path,
) -> None:
    """The migration remakes `jobs` (its CHECK on `kind`): old rows keep their order, results
    and keys; an embedding job's vectors are stored and read back, and left out of a list."""
    path = tmp_path / "queen.db"
    Store(path).close()
    text = '{"text": "red", "finish_reason": "stop", "completion_tokens": 1}'
    with sqlite3.connect(path) as before:  # jobs as the eighth migration left it
        before.executescript(
            f"""
            DROP TABLE jobs;
            CREATE TABLE jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                priority TEXT NOT NULL CHECK (priority IN ('interactive', 'batch')),
                model TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('chat', 'completion')),
                body TEXT NOT NULL,
                state TEXT NOT NULL
                    CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
                worker TEXT,
                runs INTEGER NOT NULL DEFAULT 0,
                result TEXT,
                error TEXT,
                created_at REAL NOT NULL,
                started_at REAL,
                finished_at REAL,
                owner TEXT,
                idempotency_key TEXT
            );
            CREATE INDEX jobs_by_state ON jobs (state, seq);
            CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (owner, idempotency_key)
                WHERE idempotency_key IS NOT NULL;
            INSERT INTO jobs (seq, id, priority, model, kind, body, state, result, created_at,
                owner, idempotency_key)
                VALUES (7, 'job-old', 'batch', '{MODEL}', 'chat', '{{}}', 'done', '{text}', 1,
                'alice', 'k');
            PRAGMA user_version = 8;
            """
        )
        with pytest.raises(sqlite3.IntegrityError):
            before.execute(
                "INSERT INTO jobs (id, priority, model, kind, body, state, created_at) "
                "VALUES ('job-x', 'batch', 'm', 'embedding', '{}', 'queued', 0)"
            )
    store = Store(path)
    table = JobTable(store.path)
    assert table.get("job-old") == JobRecord(
        job_id="job-old",
        priority="batch",
        model=MODEL,
        kind="chat",
        state="done",
        runs=0,
        created_at=1,
        result=JobResult(text="red", finish_reason="stop", completion_tokens=1),
        owner="alice",
    )
    assert table.keyed("alice", "k") is not None
    record = JobRecord(
        job_id="job-new",
        priority="batch",
        model=MODEL,
        kind="embedding",
        state="queued",
        runs=0,
        created_at=2,
    )
    assert table.insert(record, {"model": MODEL, "input": "bees"}) is None
    vectors = EmbeddingResult.model_validate(
        {
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
    )
    ended = record.model_copy(update={"state": "done", "result": vectors, "finished_at": 3.0})
    assert table.ended(ended)
    assert table.get("job-new") == ended
    listed = table.recent(None, 10)
    assert [(r.job_id, r.result) for r in listed] == [
        ("job-new", None),
        ("job-old", JobResult(text="red", finish_reason="stop", completion_tokens=1)),
    ]
    table.close()
    store.close()
