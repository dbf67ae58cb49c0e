"""The apply lock: one apply at a time, held as one row in the queen's SQLite.

The row names its holder, when it was taken and the queen process holding it (pid and
start time). A lock whose queen process is gone was left by a killed queen: the next
acquire breaks it and says so in the log. Anything else is broken only by
`force_unlock` with the lock's ID, the way Terraform's `force-unlock` works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator

import psutil

from rbee.errors import NotFoundError, RbeeError
from rbee.wire import LockState

__all__ = ["HEAL_HOLDER", "LOCK_SCHEMA", "ApplyLock", "ApplyLocked", "LockNotFound"]

log = logging.getLogger(__name__)

# `scope` is the primary key and always 'apply': the constraint that allows one holder.
# The queen's Store creates the table with the rest of its schema.
LOCK_SCHEMA = """
CREATE TABLE IF NOT EXISTS lock (
    scope TEXT PRIMARY KEY CHECK (scope = 'apply'),
    id TEXT NOT NULL UNIQUE,
    holder TEXT NOT NULL,
    since REAL NOT NULL,
    apply_id INTEGER,
    queen_pid INTEGER NOT NULL,
    queen_started REAL NOT NULL
);
"""
_COLUMNS = "id, holder, since, apply_id, queen_pid, queen_started"


#: The holder of the lock while the queen's self-heal acts.
HEAL_HOLDER = "self-heal"


class ApplyLocked(RbeeError):
    """Another apply holds the lock; `lock` is that lock when known."""

    def __init__(self, message: str, hint: str | None = None, *, lock: LockState | None = None):
        super().__init__(message, hint)
        self.lock = lock

    @classmethod
    def held(cls, lock: LockState, waited_s: float = 0.0) -> ApplyLocked:
        """The refusal a second apply gets, naming the holder and the way out."""
        waited = f" (waited {waited_s:.0f} s)" if waited_s else ""
        if lock.holder == HEAL_HOLDER:
            return cls(
                f"the queen's self-heal is mending the cluster{waited}: {lock.describe()}; "
                "it ends by itself: pass --lock-timeout (say 2m) to wait for it",
                lock=lock,
            )
        return cls(
            f"another apply is running{waited}: {lock.describe()}; wait for it, pass "
            f"--lock-timeout, or run `rbee force-unlock {lock.id}` if that apply is dead",
            lock=lock,
        )


class LockNotFound(NotFoundError):
    """`force_unlock` was given an ID that is not the current lock's."""


class ApplyLock:
    """The apply lock in a SQLite database opened in autocommit mode (`isolation_level=None`)
    that has the `lock` table (`LOCK_SCHEMA`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._pid = os.getpid()
        self._started = psutil.Process(self._pid).create_time()

    def current(self) -> LockState | None:
        """The lock row as it is, stale or not; None when no one holds it."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM lock WHERE scope = 'apply'").fetchone()
        return _lock(*row) if row else None

    def live(self) -> LockState | None:
        """The lock when its queen process still runs; None when free or stale."""
        lock = self.current()
        return lock if lock is not None and not lock.stale else None

    def try_acquire(self, holder: str) -> LockState:
        """Take the lock at once (breaking a stale one) or raise ApplyLocked naming the holder."""
        lock = _lock(str(uuid.uuid4()), holder, time.time(), None, self._pid, self._started)
        with self._immediate():
            held = self.current()
            if held is not None:
                if not held.stale:
                    raise ApplyLocked.held(held)
                self._db.execute("DELETE FROM lock WHERE id = ?", (held.id,))
                log.warning(
                    "event=stale_lock_taken_over lock_id=%s holder=%r since=%s queen_pid=%s "
                    "reason=queen_process_gone",
                    held.id,
                    held.holder,
                    held.since_text,
                    held.queen_pid,
                )
            self._db.execute(
                f"INSERT INTO lock (scope, {_COLUMNS}) VALUES ('apply', ?, ?, ?, ?, ?, ?)",
                (lock.id, lock.holder, lock.since, None, lock.queen_pid, lock.queen_started),
            )
        log.info("event=lock_acquired lock_id=%s holder=%r", lock.id, holder)
        return lock

    async def acquire(self, holder: str, timeout_s: float = 0.0, poll_s: float = 0.25) -> LockState:
        """Take the lock, waiting up to `timeout_s` for the holder to let go."""
        started = time.monotonic()
        while True:
            try:
                return self.try_acquire(holder)
            except ApplyLocked as exc:
                waited = time.monotonic() - started
                if waited >= timeout_s:
                    if exc.lock is None or not timeout_s:
                        raise
                    raise ApplyLocked.held(exc.lock, waited) from None
                await asyncio.sleep(min(poll_s, timeout_s - waited))

    def attach(self, lock_id: str, apply_id: int) -> None:
        """Record which history entry the apply under this lock writes."""
        self._db.execute("UPDATE lock SET apply_id = ? WHERE id = ?", (apply_id, lock_id))

    def release(self, lock_id: str) -> bool:
        """Let go of the lock; False when it was no longer ours (force-unlocked meanwhile)."""
        released = self._db.execute("DELETE FROM lock WHERE id = ?", (lock_id,)).rowcount > 0
        log.info("event=lock_released lock_id=%s released=%s", lock_id, released)
        return released

    def force_unlock(self, lock_id: str) -> LockState:
        """Remove the lock if `lock_id` is its ID; an apply still running under it runs on."""
        with self._immediate():
            held = self.current()
            if held is None:
                raise LockNotFound(f"no apply lock is held (asked to unlock {lock_id})")
            if held.id != lock_id:
                raise LockNotFound(
                    f"lock ID {lock_id} does not match the current lock, {held.describe()}"
                )
            self._db.execute("DELETE FROM lock WHERE id = ?", (lock_id,))
        log.warning("event=lock_force_unlocked lock_id=%s holder=%r", held.id, held.holder)
        return held

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[None]:
        """A write transaction taken up front, so check-then-write is atomic across queens."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _lock(
    lock_id: str,
    holder: str,
    since: float,
    apply_id: int | None,
    queen_pid: int,
    queen_started: float,
) -> LockState:
    """A lock row as the one lock type, read now: `stale` when its queen process is gone."""
    return LockState(
        id=lock_id,
        holder=holder,
        since=since,
        apply_id=apply_id,
        queen_pid=queen_pid,
        queen_started=queen_started,
        since_text=_when(since),
        stale=_is_stale(queen_pid, queen_started),
    )


def _is_stale(queen_pid: int, queen_started: float) -> bool:
    """Whether the queen process that took a lock is gone (pid reuse is told by start time)."""
    try:
        proc = psutil.Process(queen_pid)
        alive = proc.status() != psutil.STATUS_ZOMBIE
        return not alive or abs(proc.create_time() - queen_started) > 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False  # some process runs there and we cannot tell which: do not break it


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp))
