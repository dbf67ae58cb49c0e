"""The jobs' rows in the queen's SQLite (table `jobs`, made by `rbee.queen.control.store`).

A job is written when it is submitted, before its id is answered, and again at each change of
state; its result is stored once, by the update that ends it, as JSON (`JobResult`, or an
embedding job's `EmbeddingResult`: rows from before embedding jobs read as they were). Its
`Idempotency-Key`, if sent, is unique per owner and goes with its row.

The table has a connection of its own, used by one thread (`call`): a write waits for its
fsync (0.4 ms here, 8 ms at p99), and the event loop, which relays every OpenAI request, must
not wait with it. One thread also keeps the writes in the order they were asked for.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from rbee.queen.serve.jobs import JobRow
from rbee.wire.jobs import ENDED, EmbeddingResult, JobKind, JobRecord, JobResult, JobState

__all__ = ["JobTable"]

_T = TypeVar("_T")

_COLUMNS = (
    "id, priority, model, kind, state, worker, runs, result, error, created_at, started_at, "
    "finished_at, owner"
)
# A list leaves out an embedding job's result: its vectors are megabytes.
_LISTED_COLUMNS = _COLUMNS.replace(
    "result", "CASE WHEN kind = 'embedding' THEN NULL ELSE result END"
)
_ENDED_SQL = "(" + ", ".join(f"'{state}'" for state in sorted(ENDED)) + ")"


_RESULTS: dict[JobKind, type[JobResult | EmbeddingResult]] = {
    "chat": JobResult,
    "completion": JobResult,
    "embedding": EmbeddingResult,
}


class JobTable:
    """Reads and writes `jobs` (autocommit: each method's write is durable when it returns):
    the jobs' `JobStore`. The methods block: the event loop runs them with `call`."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="rbee-jobs-db")

    async def call(self, method: Callable[..., _T], *args: Any) -> _T:
        """`method(*args)` on the table's thread, once the writes asked for before it ran."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, method, *args)

    def close(self) -> None:
        """Finish the writes asked for, then close."""
        self._thread.shutdown(wait=True)
        self._db.close()

    def insert(
        self, record: JobRecord, body: dict[str, Any], idempotency_key: str | None = None
    ) -> JobRow | None:
        """Write a new job; when its owner has a job with `idempotency_key` already, nothing is
        written and that job is returned."""
        try:
            self._db.execute(
                "INSERT INTO jobs (id, priority, model, kind, body, state, created_at, owner, "
                "idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.job_id,
                    record.priority,
                    record.model,
                    record.kind,
                    json.dumps(body),
                    record.state,
                    record.created_at,
                    record.owner,
                    idempotency_key,
                ),
            )
        except sqlite3.IntegrityError:
            earlier = None if idempotency_key is None else self.keyed(record.owner, idempotency_key)
            if earlier is None:
                raise
            return earlier
        return None

    def keyed(self, owner: str | None, idempotency_key: str) -> JobRow | None:
        """The job of `owner` submitted with `idempotency_key`, if there is one."""
        row = self._db.execute(
            f"SELECT body, {_COLUMNS} FROM jobs WHERE owner IS ? AND idempotency_key = ?",
            (owner, idempotency_key),
        ).fetchone()
        return None if row is None else JobRow(_record(*row[1:]), json.loads(row[0]))

    def started(self, record: JobRecord) -> None:
        """It runs on `record.worker`: `runs` counts it."""
        self._db.execute(
            "UPDATE jobs SET state = 'running', worker = ?, runs = ?, started_at = ? WHERE id = ?",
            (record.worker, record.runs, record.started_at, record.job_id),
        )

    def ended(self, record: JobRecord) -> bool:
        """Store how it ended; False (and nothing written) if it had ended already, so a job
        keeps the one result it got first."""
        cursor = self._db.execute(
            "UPDATE jobs SET state = ?, worker = ?, result = ?, error = ?, finished_at = ? "
            f"WHERE id = ? AND state NOT IN {_ENDED_SQL}",
            (
                record.state,
                record.worker,
                record.result.model_dump_json() if record.result else None,
                record.error,
                record.finished_at,
                record.job_id,
            ),
        )
        return cursor.rowcount == 1

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(*row) if row else None

    def recent(
        self, state: JobState | None, limit: int, owner: str | None = None
    ) -> list[JobRecord]:
        """The newest `limit` jobs (in `state`, of `owner`, if given), newest first; an
        embedding job without its result (its vectors, megabytes: `get` reads them)."""
        clauses = [(c, v) for c, v in (("state = ?", state), ("owner = ?", owner)) if v]
        where = ("WHERE " + " AND ".join(c for c, _ in clauses)) if clauses else ""
        rows = self._db.execute(
            f"SELECT {_LISTED_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ?",
            (*(v for _, v in clauses), limit),
        ).fetchall()
        return [_record(*row) for row in rows]

    def unfinished(self) -> list[JobRow]:
        """Jobs a queen left queued or running when it stopped, in the order they came; those
        that were running are queued again (they are run again from the start)."""
        self._db.execute("UPDATE jobs SET state = 'queued', worker = NULL WHERE state = 'running'")
        rows = self._db.execute(
            f"SELECT body, {_COLUMNS} FROM jobs WHERE state = 'queued' ORDER BY seq"
        ).fetchall()
        return [JobRow(_record(*columns), json.loads(body)) for body, *columns in rows]

    def prune(self, finished_before: float, keep: int) -> int:
        """Delete ended jobs that finished before `finished_before`, and all but the newest
        `keep` ended ones; how many went."""
        cursor = self._db.execute(
            f"DELETE FROM jobs WHERE state IN {_ENDED_SQL} AND (finished_at < ? OR seq IN "
            f"(SELECT seq FROM jobs WHERE state IN {_ENDED_SQL} "
            "ORDER BY finished_at DESC, seq DESC LIMIT -1 OFFSET ?))",
            (finished_before, keep),
        )
        return cursor.rowcount


def _record(
    job_id: str,
    priority: Any,
    model: str,
    kind: Any,
    state: Any,
    worker: str | None,
    runs: int,
    result: str | None,
    error: str | None,
    created_at: float,
    started_at: float | None,
    finished_at: float | None,
    owner: str | None,
) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        priority=priority,
        model=model,
        kind=kind,
        state=state,
        worker=worker,
        runs=runs,
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        result=_RESULTS[kind].model_validate_json(result) if result else None,
        error=error,
        owner=owner,
    )
