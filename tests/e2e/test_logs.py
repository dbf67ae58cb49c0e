"""`rbee logs`: the queen's, a hive's and a worker's logs through the queen, on a real local
cluster (queen, hive and a worker on the real model), driven by the real CLI.

`rbee logs` takes `-f` as `--follow` (as `tail -f` does), so these tests name the YAML with
RBEE_CONFIG instead of the `-f FILE` the other commands take.
"""

from __future__ import annotations

import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.cluster import LocalCluster, applied_cluster, wait_until

pytestmark = pytest.mark.slow

WORKER = "local.gemma3-270m.0"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[LocalCluster]:
    with applied_cluster(tmp_path_factory.mktemp("home"), gguf) as the_cluster:
        yield the_cluster


def _command(cluster: LocalCluster, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {**cluster.env, "RBEE_CONFIG": str(cluster.config)}
    return [sys.executable, "-m", "rbee.cli", "logs", *args], env


def _logs(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    argv, env = _command(cluster, *args)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def _stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S,000", time.localtime(time.time() - seconds_ago))


def test_the_queens_log_shows_its_startup_line(cluster: LocalCluster) -> None:
    result = _logs(cluster, "queen", "-n", "10000")
    assert result.returncode == 0, result.stderr
    assert f"listening host=127.0.0.1 port={cluster.queen_port}" in result.stdout


def test_the_local_hives_log_comes_from_the_hive(cluster: LocalCluster) -> None:
    result = _logs(cluster, "hive", "local", "-n", "10000")
    assert result.returncode == 0, result.stderr
    assert f"listening host=127.0.0.1 port={cluster.hive_port} name=local" in result.stdout
    assert f"worker spawned worker_id={WORKER}" in result.stdout


def test_a_workers_last_lines(cluster: LocalCluster) -> None:
    log = cluster.home / ".local/state/rbee/workers" / f"{WORKER}.log"
    written = log.read_text().splitlines()
    assert len(written) >= 2, written
    five = _logs(cluster, "worker", WORKER, "-n", "5")
    assert five.returncode == 0, five.stderr
    assert five.stdout.splitlines() == written[-5:]
    assert _logs(cluster, "worker", WORKER, "-n", "1").stdout.splitlines() == written[-1:]


def test_since_keeps_the_entries_stamped_within_it(cluster: LocalCluster) -> None:
    log = cluster.home / ".local/state/rbee/workers" / f"{WORKER}.log"
    old, fresh = f"{_stamp(7200)} level=INFO an old entry", f"{_stamp(1)} level=INFO a fresh one"
    with log.open("a") as out:
        out.write(f"{old}\n  its traceback\n{fresh}\n  its second line\n")
    recent = _logs(cluster, "worker", WORKER, "--since", "10m")
    assert recent.returncode == 0, recent.stderr
    assert fresh in recent.stdout and "its second line" in recent.stdout
    assert old not in recent.stdout and "its traceback" not in recent.stdout
    assert old in _logs(cluster, "worker", WORKER, "-n", "4").stdout


def _as_from_a_terminal() -> None:
    """In the follower, before it runs: SIGINT at its default and not blocked, as a shell
    starts a command. A child inherits an ignored or blocked SIGINT, and what ran before in
    this test process (an event loop, a library's threads) may have left it so: in the full
    suite the follower sometimes never saw its Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _follow_until_seen(
    cluster: LocalCluster, args: list[str], make_line: Callable[[], str]
) -> None:
    """Run `rbee logs ARGS -f`; once its tail came, `make_line` logs a line and says what it
    holds; when that line is printed, Ctrl-C ends the command cleanly.

    Each step waits for what it tests (a line printed, the process gone), with bounds far
    beyond what a loaded machine takes; both pipes are drained as they fill, so the command
    never blocks on a full one."""
    argv, env = _command(cluster, *args, "-f", "-n", "1")
    follower = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_from_a_terminal,
    )
    assert follower.stdout is not None and follower.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    errors: list[str] = []
    for pipe, sink in ((follower.stdout, lines.put), (follower.stderr, errors.append)):
        threading.Thread(target=lambda p=pipe, s=sink: [s(line) for line in p], daemon=True).start()
    try:
        lines.get(timeout=60)  # the tail came: now it follows
        expected = make_line()
        deadline = time.monotonic() + 60
        while expected not in lines.get(timeout=max(0.1, deadline - time.monotonic())):
            pass
        follower.send_signal(signal.SIGINT)
        assert follower.wait(60) == 0, "".join(errors)
    finally:
        follower.kill()
        follower.wait(10)
    assert "Traceback" not in "".join(errors)


def test_follow_streams_the_queens_new_lines_until_interrupted(cluster: LocalCluster) -> None:
    def request() -> str:
        request_id = f"follow-{secrets.token_hex(4)}"
        body = {"model": "gemma3-270m", "prompt": "Hi", "max_tokens": 2}
        answer = httpx.post(
            f"{cluster.queen_url}/v1/completions",
            json=body,
            headers={**cluster.headers, "x-request-id": request_id},
            timeout=60,
        )
        assert answer.status_code == 200
        return f"request_id={request_id}"

    _follow_until_seen(cluster, ["queen"], request)


def test_follow_streams_a_workers_new_lines_through_its_hive(cluster: LocalCluster) -> None:
    [hive] = [p for p in cluster.processes() if "rbee.hive" in " ".join(p.cmdline())]
    followed: set[tuple[str, int]] = set()

    def connections() -> set[tuple[str, int]]:
        return {
            (c.raddr.ip, c.raddr.port)
            for c in hive.net_connections()
            if c.status == "ESTABLISHED" and c.laddr.port == cluster.hive_port
        }

    def write() -> str:
        # While the keeper follows: the queen's stream from the hive is among these (the
        # queen's health checks come and go on connections of their own).
        followed.update(connections())
        line = f"{_stamp(0)} level=INFO written while followed {secrets.token_hex(4)}"
        with (cluster.home / ".local/state/rbee/workers" / f"{WORKER}.log").open("a") as out:
            out.write(line + "\n")
        return line

    _follow_until_seen(cluster, ["worker", WORKER], write)
    assert followed
    # The keeper left, so the queen let go of the hive's stream too.
    wait_until(
        "the queen to close its stream from the hive",
        lambda: not followed & connections(),
        timeout=60,
    )


def test_an_unknown_hive_or_worker_is_one_clear_line(cluster: LocalCluster) -> None:
    hive = _logs(cluster, "hive", "nope")
    assert hive.returncode == 1
    assert "no hive named 'nope' is registered" in hive.stderr
    worker = _logs(cluster, "worker", "elsewhere.gemma3-270m.0")
    assert worker.returncode == 1 and "no live worker 'elsewhere.gemma3-270m.0'" in worker.stderr
    bad = _logs(cluster, "queen", "--since", "soon")
    assert bad.returncode == 2 and "is not a duration" in bad.stderr
    for result in (hive, worker, bad):
        assert "Traceback" not in result.stderr
