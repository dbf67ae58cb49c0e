"""Saved plans, targets and drift reports against a real local cluster."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.cluster import LocalCluster, applied_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[LocalCluster]:
    # Self-heal off: only the applies under test change the cluster.
    with applied_cluster(tmp_path_factory.mktemp("home"), gguf) as the_cluster:
        yield the_cluster


def test_saved_plan_is_applied_exactly(cluster: LocalCluster) -> None:
    saved = cluster.home / "scale-up.json"
    cluster.write(replicas=2)
    cluster.rbee("plan", "--out", str(saved))
    body = json.loads(saved.read_text())
    assert [a["address"] for a in body["actions"]] == ["worker.local.gemma3-270m[1]"]
    # The YAML moves on; the saved plan is still what gets applied.
    cluster.write(replicas=3)
    result = cluster.rbee("apply", str(saved))
    assert "worker.local.gemma3-270m[1]: done" in result.stdout
    assert sorted(w["worker_id"] for w in cluster.wait_workers(2)) == [
        "local.gemma3-270m.0",
        "local.gemma3-270m.1",
    ]


def test_saved_plan_is_refused_as_stale_after_the_cluster_changed(
    cluster: LocalCluster,
) -> None:
    saved = cluster.home / "scale-down.json"
    cluster.write(replicas=1)
    cluster.rbee("plan", "--out", str(saved))
    victim = next(w for w in cluster.workers() if w["worker_id"] == "local.gemma3-270m.0")
    os.kill(victim["pid"], signal.SIGKILL)
    cluster.wait_workers(1)
    result = cluster.rbee("apply", str(saved), check=False)
    assert result.returncode == 1
    assert "the plan is stale" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was done: the other worker still runs.
    assert [w["worker_id"] for w in cluster.workers()] == ["local.gemma3-270m.1"]


def test_target_limits_the_apply_to_one_resource(cluster: LocalCluster) -> None:
    cluster.write(replicas=3)
    plan = cluster.rbee("plan", "--target", "worker.local.gemma3-270m[2]")
    assert "+ worker.local.gemma3-270m[2]" in plan.stdout
    assert "worker.local.gemma3-270m[0]" not in plan.stdout
    cluster.rbee("apply", "--auto-approve", "--target", "worker.local.gemma3-270m[2]")
    ids = sorted(w["worker_id"] for w in cluster.wait_workers(2))
    assert ids == ["local.gemma3-270m.1", "local.gemma3-270m.2"]


def test_refresh_only_reports_drift_and_changes_nothing(cluster: LocalCluster) -> None:
    before = sorted(w["pid"] for w in cluster.workers())
    result = cluster.rbee("plan", "--refresh-only", "--detailed-exitcode", check=False)
    assert result.returncode == 2
    assert "worker.local.gemma3-270m[0]" in result.stdout
    assert "Nothing was changed." in result.stdout
    assert sorted(w["pid"] for w in cluster.workers()) == before


def test_json_plan_is_machine_readable(cluster: LocalCluster) -> None:
    body = json.loads(cluster.rbee("plan", "--json").stdout)
    assert body["format_version"] == 1
    assert body["summary"] == {"add": 1, "change": 0, "destroy": 0}
    assert body["cluster"]["queen"]["url"] == cluster.queen_url


def test_apply_json_streams_one_event_per_line_for_ci_logs(cluster: LocalCluster) -> None:
    result = cluster.rbee("apply", "--auto-approve", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "lock" and kinds[1] == "plan" and kinds[-1] == "summary"
    assert {"start", "spawned", "done"} <= set(kinds)
    summary = events[-1]
    assert summary["ok"] and summary["done"] == ["worker.local.gemma3-270m[0]"]
    assert "Apply complete" not in result.stdout  # stdout is JSON lines only


class _Interactive:
    """`rbee apply` at a terminal: stdin is a pty (so it asks), stdout a pipe read as it comes."""

    def __init__(self, cluster: LocalCluster) -> None:
        self._master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rbee.cli", "apply", "-f", str(cluster.config)],
            env=cluster.env,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(slave)
        self.shown = ""

    def wait_for_question(self, timeout: float = 60) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while "Only 'yes' will be accepted" not in self.shown:
            assert time.monotonic() < deadline, f"no question; saw {self.shown!r}"
            ready, _, _ = select.select([self.proc.stdout], [], [], 1)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096).decode()
                assert chunk, f"rbee apply ended before asking; saw {self.shown!r}"
                self.shown += chunk
        return self.shown

    def answer(self, text: str) -> tuple[int, str, str]:
        os.write(self._master, f"{text}\n".encode())
        out, err = self.proc.communicate(timeout=240)
        os.close(self._master)
        return self.proc.returncode, out, err


def test_interactive_apply_runs_the_plan_it_showed_or_nothing(cluster: LocalCluster) -> None:
    """The user approves a plan, not a YAML: a worker dying between the plan shown and `yes`
    makes it stale (the queen would now plan two workers, not one), and nothing runs."""
    cluster.write(replicas=1)
    cluster.rbee("apply", "--auto-approve")
    [before] = cluster.wait_workers(1)
    cluster.write(replicas=2)
    asking = _Interactive(cluster)
    shown = asking.wait_for_question()
    assert "+ worker.local.gemma3-270m[1]" in shown and "[0]" not in shown
    os.kill(before["pid"], signal.SIGKILL)
    cluster.wait_workers(0)
    code, _, err = asking.answer("yes")
    assert code == 1
    assert "the plan is stale" in err and "nothing was done" in err
    assert "Traceback" not in err
    time.sleep(1)  # a different plan would have spawned two workers by now
    assert cluster.workers() == []
    history = cluster.rbee("history", "--json").stdout
    assert "stale" in json.loads(history)[0]["error"]

    # Unchanged between the question and `yes`: exactly the plan shown runs.
    asking = _Interactive(cluster)
    shown = asking.wait_for_question()
    assert "+ worker.local.gemma3-270m[0]" in shown and "+ worker.local.gemma3-270m[1]" in shown
    code, out, err = asking.answer("yes")
    assert code == 0, err
    assert "Apply complete! 2 actions" in out
    assert len(cluster.wait_workers(2)) == 2
