"""Apply history in the queen's SQLite: what each apply did, and applies a dead queen left."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from rbee.cli.source import applied_source
from rbee.queen.control.store import Store
from rbee.wire import AppliedSource

CLUSTER = {"version": 1}


def test_a_finished_apply_records_holder_plan_result_and_failures(tmp_path: Path) -> None:
    store = Store(tmp_path / "queen.db")
    apply_id = store.begin_apply(
        "alice@laptop (pid 3)", {"add": 2, "change": 0, "destroy": 0}, CLUSTER, lock_id="L1"
    )
    store.end_apply(
        apply_id,
        "failed",
        done=["hive.local"],
        failed={"model.local.m": "sha256 mismatch"},
        skipped=["worker.local.m[0]"],
    )
    [entry] = store.history()
    assert entry.id == apply_id
    assert entry.holder == "alice@laptop (pid 3)"
    assert entry.summary == {"add": 2, "change": 0, "destroy": 0}
    assert entry.result == "failed"
    assert entry.lock_id == "L1"
    assert entry.done == ["hive.local"]
    assert entry.failed == {"model.local.m": "sha256 mismatch"}
    assert entry.skipped == ["worker.local.m[0]"]
    assert entry.duration_s is not None and entry.duration_s >= 0
    assert store.desired() == CLUSTER


def test_history_is_newest_first_and_limited(tmp_path: Path) -> None:
    store = Store(tmp_path / "queen.db")
    ids = [store.begin_apply(f"user{i}", {}, CLUSTER) for i in range(5)]
    for apply_id in ids:
        store.end_apply(apply_id, "ok")
    assert [e.id for e in store.history(limit=3)] == ids[::-1][:3]


def test_an_apply_still_running_shows_as_running(tmp_path: Path) -> None:
    store = Store(tmp_path / "queen.db")
    store.begin_apply("alice", {}, CLUSTER)
    [entry] = store.history()
    assert entry.result == "running"
    assert entry.finished_at is None and entry.duration_s is None


def test_an_apply_that_stopped_on_an_error_is_closed_as_failed(tmp_path: Path) -> None:
    store = Store(tmp_path / "queen.db")
    apply_id = store.begin_apply("alice", {"add": 1}, CLUSTER, lock_id="L1")
    store.fail_apply("L1", "alice", "observing hive local failed")
    [entry] = store.history()
    assert (entry.id, entry.result) == (apply_id, "failed")
    assert entry.error == "observing hive local failed"


def test_an_apply_refused_before_its_plan_is_still_recorded(tmp_path: Path) -> None:
    store = Store(tmp_path / "queen.db")
    store.fail_apply("L2", "bob", "saved plan is stale")
    [entry] = store.history()
    assert (entry.holder, entry.result, entry.error) == (
        "bob",
        "failed",
        "saved plan is stale",
    )
    assert entry.summary == {}


def test_applies_a_dead_queen_left_open_are_marked_interrupted(tmp_path: Path) -> None:
    store = Store(tmp_path / "queen.db")
    dead = store.begin_apply("alice", {}, CLUSTER)
    running = store.begin_apply("bob", {}, CLUSTER)
    assert store.interrupt_unfinished(running) == 1
    results = {e.id: e.result for e in store.history()}
    assert results == {dead: "interrupted", running: "running"}


def test_a_database_from_before_the_history_columns_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "queen.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE applies (
            id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, finished_at REAL,
            holder TEXT NOT NULL, summary TEXT NOT NULL, result TEXT
        );
        INSERT INTO applies (started_at, finished_at, holder, summary, result)
            VALUES (1.0, 2.0, 'old', '{"add": 1}', 'ok');
        """
    )
    old.close()
    store = Store(path)
    [entry] = store.history()
    assert (entry.kind, entry.holder, entry.result, entry.failed, entry.done) == (
        "apply",
        "old",
        "ok",
        {},
        [],
    )
    store.end_apply(store.begin_apply("new", {}, CLUSTER), "ok", done=["hive.local"])
    assert store.history()[0].done == ["hive.local"]


def test_an_apply_records_the_digest_and_source_of_its_yaml(tmp_path: Path) -> None:
    store = Store(tmp_path / "queen.db")
    source = AppliedSource(file="cluster.yaml", commit="a" * 40, dirty=True)
    store.begin_apply("alice", {}, {"version": 1, "hives": []}, source=source)
    again = store.begin_apply("bob", {}, {"hives": [], "version": 1})  # the same, reordered
    first, second = store.history()[::-1]
    assert first.source == source and second.source is None
    assert first.digest == second.digest and first.digest is not None and len(first.digest) == 64
    last = store.last_apply()
    assert last is not None and last.id == again


def test_applied_source_names_the_commit_and_whether_the_file_changed(tmp_path: Path) -> None:
    alone = tmp_path / "alone" / "cluster.yaml"
    alone.parent.mkdir()
    alone.write_text("version: 1\n")
    assert applied_source(alone) == AppliedSource(file=str(alone))
    repo = tmp_path / "repo"
    repo.mkdir()
    config = repo / "cluster.yaml"
    config.write_text("version: 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "cluster.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "cluster"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert applied_source(config) == AppliedSource(file=str(config), commit=head, dirty=False)
    config.write_text("version: 1\nhives: []\n")
    assert applied_source(config).dirty is True


def test_a_self_heal_is_history_but_neither_the_last_apply_nor_the_desired_cluster(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "queen.db")
    applied = store.begin_apply("alice", {"add": 1}, {"version": 1, "hives": []})
    store.end_apply(applied, "ok", done=["hive.local"])
    heal = store.begin_heal(
        {"add": 1}, {"worker.local.m[0]": "create: spawn"}, "worker local.m.0: refused", "L1"
    )
    store.end_apply(heal, "failed", failed={"worker.local.m[0]": "exited while starting"})
    newest, first = store.history()
    assert (newest.kind, newest.holder, newest.result) == ("self-heal", "self-heal", "failed")
    assert newest.reasons == {"worker.local.m[0]": "create: spawn"}
    assert newest.trigger == "worker local.m.0: refused"
    assert newest.digest == first.digest  # what it healed towards
    last = store.last_apply()
    assert last is not None and last.id == applied
    assert store.desired() == {"version": 1, "hives": []}


def test_down_suspends_self_heal_until_the_next_apply(tmp_path: Path) -> None:
    store = Store(tmp_path / "queen.db")
    store.begin_apply("alice", {}, CLUSTER)
    assert store.suspended() is None
    store.suspend("`rbee down` at noon")
    assert Store(tmp_path / "queen.db").suspended() == "`rbee down` at noon"  # survives a restart
    store.begin_apply("alice", {}, CLUSTER)
    assert store.suspended() is None
