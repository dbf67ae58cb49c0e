"""The queen's SQLite: every table it keeps, made and migrated in one place.

The last applied cluster and the history of applies and self-heals are read and written
here; the apply lock's row (`rbee.apply.lock`), the hive registry and the API keys share
this connection (`Store.connection`); the jobs have one of their own, in a thread
(`rbee.queen.control.job_table`). Never on the hot path: API keys are looked up in memory.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from rbee.apply.lock import LOCK_SCHEMA
from rbee.wire import AppliedSource, ApplyRecord

__all__ = ["Store"]

_APPLIES = """
CREATE TABLE IF NOT EXISTS applies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    holder TEXT NOT NULL,
    summary TEXT NOT NULL,
    result TEXT
);
CREATE TABLE IF NOT EXISTS desired (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cluster TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""
# Columns added after the first release: added to an older database when it is opened.
_APPLIES_ADDED = {
    "lock_id": "TEXT",
    "done": "TEXT",  # JSON list of addresses
    "failed": "TEXT",  # JSON object address → cause
    "skipped": "TEXT",  # JSON list of addresses
    "error": "TEXT",  # why the apply as a whole stopped, when it did
}
_HIVES = """
CREATE TABLE IF NOT EXISTS hives (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'unknown',
    version TEXT,
    pid INTEGER,
    error TEXT,
    checked_at REAL,
    online_at REAL
);
"""
_HIVES_ADDED = {"capabilities": "TEXT"}
_API_KEYS = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT NOT NULL,
    hash TEXT UNIQUE,
    prefix TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('inference', 'plan', 'admin')),
    rpm INTEGER,
    tpm INTEGER,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_live_name ON api_keys (name)
    WHERE revoked_at IS NULL;
"""
# Jobs (`rbee.queen.serve.jobs`): `seq` is the order they came in, which a restart keeps.
_JOBS = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    priority TEXT NOT NULL CHECK (priority IN ('interactive', 'batch')),
    model TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('chat', 'completion', 'embedding')),
    body TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    worker TEXT,
    runs INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;
"""
_HISTORY_COLUMNS = (
    "id, holder, started_at, finished_at, summary, result, lock_id, done, failed, skipped, error, "
    "digest, source, kind, reasons, trigger"
)


class Store:
    """A small SQLite database in the queen's state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        """Bring any older database up to date: `user_version` counts the steps applied. Each
        step is idempotent, because databases from before the count have some of them."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number, step in enumerate(_MIGRATIONS, start=1):
            if number > version:
                with self._db:
                    # An autocommit connection: without BEGIN each statement would commit alone.
                    self._db.execute("BEGIN")
                    step(self._db)
                    self._db.execute(f"PRAGMA user_version = {number}")

    @property
    def connection(self) -> sqlite3.Connection:
        """The autocommit connection, for the apply lock's table."""
        return self._db

    def close(self) -> None:
        self._db.close()

    def desired(self) -> dict[str, Any] | None:
        """The cluster of the last apply, as JSON-ready data."""
        row = self._db.execute("SELECT cluster FROM desired WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else None

    def begin_apply(
        self,
        holder: str,
        summary: dict[str, int],
        cluster: dict[str, Any],
        *,
        lock_id: str | None = None,
        source: AppliedSource | None = None,
    ) -> int:
        """Remember `cluster` as the desired one and open a history entry; returns its id."""
        now = time.time()
        with self._db:
            self._db.execute(
                "INSERT INTO desired (id, cluster, updated_at) VALUES (1, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET cluster = excluded.cluster, "
                "updated_at = excluded.updated_at, suspended = NULL",
                (json.dumps(cluster), now),
            )
            cursor = self._db.execute(
                "INSERT INTO applies (started_at, holder, summary, lock_id, digest, source) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    now,
                    holder,
                    json.dumps(summary),
                    lock_id,
                    _digest(cluster),
                    source.model_dump_json() if source else None,
                ),
            )
        return int(cursor.lastrowid or 0)

    def begin_heal(
        self, summary: dict[str, int], reasons: Mapping[str, str], trigger: str, lock_id: str
    ) -> int:
        """Open a `self-heal` history entry: what it does (address → why) and what set it off.
        The desired cluster is not touched: a heal converges on the last apply's."""
        row = self._db.execute("SELECT cluster FROM desired WHERE id = 1").fetchone()
        digest = _digest(json.loads(row[0])) if row else None
        cursor = self._db.execute(
            "INSERT INTO applies (started_at, holder, summary, lock_id, digest, kind, reasons, "
            "trigger) VALUES (?, 'self-heal', ?, ?, ?, 'self-heal', ?, ?)",
            (time.time(), json.dumps(summary), lock_id, digest, json.dumps(dict(reasons)), trigger),
        )
        return int(cursor.lastrowid or 0)

    def suspend(self, why: str) -> None:
        """Stop self-heal until the next apply (`rbee down` stopped the cluster on purpose)."""
        self._db.execute("UPDATE desired SET suspended = ? WHERE id = 1", (why,))

    def suspended(self) -> str | None:
        """Why self-heal is stopped until the next apply, or None."""
        row = self._db.execute("SELECT suspended FROM desired WHERE id = 1").fetchone()
        return row[0] if row else None

    def end_apply(
        self,
        apply_id: int,
        result: str,
        *,
        done: Iterable[str] = (),
        failed: Mapping[str, str] | None = None,
        skipped: Iterable[str] = (),
        error: str | None = None,
    ) -> None:
        """Close a history entry: `result` is ok or failed, `failed` maps address → cause."""
        self._db.execute(
            "UPDATE applies SET finished_at = ?, result = ?, done = ?, failed = ?, skipped = ?, "
            "error = ? WHERE id = ?",
            (
                time.time(),
                result,
                json.dumps(list(done)),
                json.dumps(dict(failed or {})),
                json.dumps(list(skipped)),
                error,
                apply_id,
            ),
        )

    def fail_apply(self, lock_id: str, holder: str, error: str) -> None:
        """Record that the apply under `lock_id` stopped on `error`, opened entry or not."""
        now = time.time()
        closed = self._db.execute(
            "UPDATE applies SET finished_at = ?, result = 'failed', error = ? "
            "WHERE lock_id = ? AND finished_at IS NULL",
            (now, error, lock_id),
        ).rowcount
        if not closed:  # it stopped before its plan was known (a stale saved plan, say)
            self._db.execute(
                "INSERT INTO applies (started_at, finished_at, holder, summary, result, lock_id, "
                "error) VALUES (?, ?, ?, '{}', 'failed', ?, ?)",
                (now, now, holder, lock_id, error),
            )

    def interrupt_unfinished(self, running: int | None) -> int:
        """Mark open entries as interrupted (their queen died), all but apply `running`."""
        cursor = self._db.execute(
            "UPDATE applies SET finished_at = ?, result = 'interrupted', "
            "error = 'the queen stopped before the apply finished' "
            "WHERE finished_at IS NULL AND id IS NOT ?",
            (time.time(), running),
        )
        return cursor.rowcount

    def last_apply(self) -> ApplyRecord | None:
        """The newest apply (not a self-heal), whatever its result."""
        row = self._db.execute(
            f"SELECT {_HISTORY_COLUMNS} FROM applies WHERE kind = 'apply' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return _entry(*row) if row else None

    def history(self, limit: int = 20) -> list[ApplyRecord]:
        """The last `limit` applies and self-heals, newest first."""
        rows = self._db.execute(
            f"SELECT {_HISTORY_COLUMNS} FROM applies ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [_entry(*row) for row in rows]


def _digest(cluster: dict[str, Any]) -> str:
    """sha256 of a cluster's canonical JSON: which version of the YAML is live."""
    return hashlib.sha256(json.dumps(cluster, sort_keys=True).encode()).hexdigest()


def _add_columns(db: sqlite3.Connection, table: str, columns: Mapping[str, str]) -> None:
    have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for column, kind in columns.items():
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _execute(db: sqlite3.Connection, script: str) -> None:
    """Run `script`'s statements inside the migration's transaction (`executescript` would
    commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _history_and_hives(db: sqlite3.Connection) -> None:
    """Everything from before migrations were counted: applies, desired, lock, hives."""
    for script in (_APPLIES, LOCK_SCHEMA, _HIVES):
        _execute(db, script)
    _add_columns(db, "applies", _APPLIES_ADDED)
    _add_columns(db, "hives", _HIVES_ADDED)


def _api_keys(db: sqlite3.Connection) -> None:
    _execute(db, _API_KEYS)


def _applied_source(db: sqlite3.Connection) -> None:
    _add_columns(db, "applies", {"digest": "TEXT", "source": "TEXT"})


def _self_heal(db: sqlite3.Connection) -> None:
    _add_columns(
        db,
        "applies",
        {"kind": "TEXT NOT NULL DEFAULT 'apply'", "reasons": "TEXT", "trigger": "TEXT"},
    )
    _add_columns(db, "desired", {"suspended": "TEXT"})


def _jobs(db: sqlite3.Connection) -> None:
    _execute(db, _JOBS)


def _job_owners(db: sqlite3.Connection) -> None:
    """Who submitted each job (the key's name): an inference key sees its own jobs only."""
    _add_columns(db, "jobs", {"owner": "TEXT"})


def _plan_keys(db: sqlite3.Connection) -> None:
    """Keys of scope `plan`: SQLite cannot change a CHECK in place, so `api_keys` is made
    again (as `_API_KEYS` says now) and its rows copied over."""
    columns = "name, hash, prefix, scope, rpm, tpm, created_at, revoked_at"
    db.execute("DROP INDEX IF EXISTS api_keys_live_name")
    db.execute("ALTER TABLE api_keys RENAME TO api_keys_before_plan")
    _execute(db, _API_KEYS)
    db.execute(f"INSERT INTO api_keys ({columns}) SELECT {columns} FROM api_keys_before_plan")
    db.execute("DROP TABLE api_keys_before_plan")


def _job_idempotency_keys(db: sqlite3.Connection) -> None:
    """A job's `Idempotency-Key`, one job per key and owner: a client that sends a job again
    (its answer lost) gets the first one back. It lives as long as the job's row."""
    _add_columns(db, "jobs", {"idempotency_key": "TEXT"})
    db.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key "
        "ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL"
    )


def _embedding_jobs(db: sqlite3.Connection) -> None:
    """Jobs of kind `embedding`: SQLite cannot change a CHECK in place, so `jobs` is made
    again (as `_JOBS` says now, with the columns added since) and its rows copied over, `seq`
    and all; an embedding job's result is JSON in `result` as a text job's is."""
    columns = ", ".join(row[1] for row in db.execute("PRAGMA table_info(jobs)"))
    for index in ("jobs_by_state", "jobs_by_finish", "jobs_by_idempotency_key"):
        db.execute(f"DROP INDEX IF EXISTS {index}")
    db.execute("ALTER TABLE jobs RENAME TO jobs_before_embedding")
    _jobs(db)
    _job_owners(db)
    _job_idempotency_keys(db)
    db.execute(f"INSERT INTO jobs ({columns}) SELECT {columns} FROM jobs_before_embedding")
    db.execute("DROP TABLE jobs_before_embedding")


_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _history_and_hives,
    _api_keys,
    _applied_source,
    _self_heal,
    _jobs,
    _job_owners,
    _plan_keys,
    _job_idempotency_keys,
    _embedding_jobs,
)


def _entry(
    apply_id: int,
    holder: str,
    started_at: float,
    finished_at: float | None,
    summary: str,
    result: Any,
    lock_id: str | None,
    done: str | None,
    failed: str | None,
    skipped: str | None,
    error: str | None,
    digest: str | None,
    source: str | None,
    kind: Any,
    reasons: str | None,
    trigger: str | None,
) -> ApplyRecord:
    return ApplyRecord(
        id=apply_id,
        holder=holder,
        started_at=started_at,
        finished_at=finished_at,
        duration_s=None if finished_at is None else round(finished_at - started_at, 2),
        summary=json.loads(summary),
        result=result or "running",
        lock_id=lock_id,
        done=json.loads(done) if done else [],
        failed=json.loads(failed) if failed else {},
        skipped=json.loads(skipped) if skipped else [],
        error=error,
        digest=digest,
        source=AppliedSource.model_validate_json(source) if source else None,
        kind=kind,
        reasons=json.loads(reasons) if reasons else {},
        trigger=trigger,
    )
