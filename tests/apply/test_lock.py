"""The apply lock on a real SQLite file: one holder, stale locks, force-unlock, waiting."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rbee.apply.lock import ApplyLock, ApplyLocked, LockNotFound
from rbee.queen.control.store import Store
from rbee.wire import LockState


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "queen.db")


@pytest.fixture
def lock(store: Store) -> ApplyLock:
    return ApplyLock(store.connection)


def _plant(store: Store, lock_id: str, pid: int, started: float) -> None:
    """A lock row as another queen process would have left it."""
    ApplyLock(store.connection)  # the table
    store.connection.execute(
        "INSERT INTO lock (scope, id, holder, since, apply_id, queen_pid, queen_started) "
        "VALUES ('apply', ?, 'ci@runner (pid 1)', ?, 7, ?, ?)",
        (lock_id, time.time() - 60, pid, started),
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_acquire_fails_at_once_naming_holder_start_and_id(lock: ApplyLock) -> None:
    held = lock.try_acquire("alice@laptop (pid 11)")
    started = time.monotonic()
    with pytest.raises(ApplyLocked) as caught:
        lock.try_acquire("bob@ci (pid 12)")
    assert time.monotonic() - started < 0.5
    message = caught.value.message
    assert "held by alice@laptop (pid 11) since " in message
    assert time.strftime("%Y-%m-%d %H:%M", time.localtime(held.since)) in message
    assert f"lock ID {held.id}" in message
    assert f"rbee force-unlock {held.id}" in message
    assert caught.value.lock == held


def test_the_lock_row_names_holder_since_apply_and_queen_pid(lock: ApplyLock) -> None:
    held = lock.try_acquire("alice")
    lock.attach(held.id, 42)
    current = lock.current()
    assert current is not None
    assert (current.id, current.holder, current.apply_id) == (held.id, "alice", 42)
    assert current.queen_pid == os.getpid()
    assert current.stale is False


def test_release_frees_the_lock_for_the_next_apply(lock: ApplyLock) -> None:
    first = lock.try_acquire("alice")
    assert lock.release(first.id)
    second = lock.try_acquire("bob")
    assert second.id != first.id
    assert lock.live() == second


def test_releasing_an_old_id_leaves_the_current_lock_alone(lock: ApplyLock) -> None:
    first = lock.try_acquire("alice")
    lock.force_unlock(first.id)
    second = lock.try_acquire("bob")
    assert not lock.release(first.id)  # the first apply ends after it was force-unlocked
    assert lock.live() == second


def test_lock_timeout_waits_for_the_holder_to_let_go(lock: ApplyLock) -> None:
    held = lock.try_acquire("alice")

    async def scenario() -> tuple[LockState, float]:
        async def let_go() -> None:
            await asyncio.sleep(0.4)
            lock.release(held.id)

        releasing = asyncio.create_task(let_go())
        started = time.monotonic()
        got = await lock.acquire("bob", timeout_s=5, poll_s=0.05)
        await releasing
        return got, time.monotonic() - started

    got, waited = asyncio.run(scenario())
    assert got.holder == "bob"
    assert 0.3 < waited < 2


def test_lock_timeout_gives_up_naming_the_holder(lock: ApplyLock) -> None:
    lock.try_acquire("alice")
    started = time.monotonic()
    with pytest.raises(ApplyLocked, match=r"\(waited 0 s\): held by alice"):
        asyncio.run(lock.acquire("bob", timeout_s=0.3, poll_s=0.05))
    assert 0.3 <= time.monotonic() - started < 1.5


def test_a_lock_whose_queen_died_is_taken_over_with_a_log_line(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    _plant(store, "dead-queen-lock", _dead_pid(), time.time() - 100)
    lock = ApplyLock(store.connection)
    assert lock.current() is not None and lock.live() is None
    with caplog.at_level(logging.WARNING, logger="rbee.apply.lock"):
        taken = lock.try_acquire("bob")
    assert lock.live() == taken
    [record] = [r for r in caplog.records if "stale_lock_taken_over" in r.getMessage()]
    assert "lock_id=dead-queen-lock" in record.getMessage()


def test_a_pid_reused_by_another_process_does_not_keep_the_lock(store: Store) -> None:
    me = psutil.Process()
    _plant(store, "reused-pid-lock", me.pid, me.create_time() - 1000)
    lock = ApplyLock(store.connection)
    assert lock.try_acquire("bob").holder == "bob"


def test_a_lock_whose_queen_runs_is_not_stale(store: Store) -> None:
    me = psutil.Process()
    _plant(store, "live-lock", me.pid, me.create_time())
    with pytest.raises(ApplyLocked, match="live-lock"):
        ApplyLock(store.connection).try_acquire("bob")


def test_force_unlock_removes_the_lock_with_the_matching_id(lock: ApplyLock) -> None:
    held = lock.try_acquire("alice")
    assert lock.force_unlock(held.id) == held
    assert lock.current() is None


def test_force_unlock_with_a_wrong_id_is_refused_naming_the_current_lock(lock: ApplyLock) -> None:
    held = lock.try_acquire("alice")
    with pytest.raises(
        LockNotFound, match=f"does not match the current lock, held by alice.*{held.id}"
    ):
        lock.force_unlock("not-the-id")
    assert lock.current() == held


def test_force_unlock_without_a_lock_says_so(lock: ApplyLock) -> None:
    with pytest.raises(LockNotFound, match="no apply lock is held"):
        lock.force_unlock("anything")


_RACER = """
import json, sys, time
from pathlib import Path
from rbee.apply.lock import ApplyLock, ApplyLocked
from rbee.queen.control.store import Store
lock = ApplyLock(Store(Path(sys.argv[1])).connection)
while time.time() < float(sys.argv[2]):
    pass
try:
    print(json.dumps({"won": lock.try_acquire(sys.argv[3]).id}), flush=True)
except ApplyLocked as exc:
    print(json.dumps({"lost": exc.message}), flush=True)
time.sleep(1.5)  # stay alive, so the winner's lock is not stale while the others look
"""


def test_racing_queens_on_one_database_get_exactly_one_lock(tmp_path: Path) -> None:
    db = tmp_path / "queen.db"
    Store(db).close()
    go = time.time() + 1.5
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(db), str(go), f"racer-{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    results = [json.loads(r.communicate(timeout=30)[0]) for r in racers]
    winners = [r["won"] for r in results if "won" in r]
    assert len(winners) == 1
    assert all(f"lock ID {winners[0]}" in r["lost"] for r in results if "lost" in r)
