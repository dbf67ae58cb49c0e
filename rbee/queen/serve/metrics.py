"""The queen's Prometheus metrics (`GET /metrics`, prometheus_client).

Counters and histograms are updated on the hot path (a lock and a dict lookup each); what is a
state rather than an event (queue depth, slots, workers and hives up) is read from the
registries when Prometheus scrapes, so the hot path pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from rbee.queen.serve.registry import Registry
    from rbee.queen.serve.worker import WorkerRecord
    from rbee.wire import SyncStatus
    from rbee.wire.plan import Action

__all__ = ["CONTENT_TYPE", "Metrics", "ModelMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # type: ignore[no-untyped-call]  # `*_created` series only double what Prometheus tracks itself

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """One queen's metrics, in a registry of their own (tests run several queens in-process)."""

    def __init__(
        self,
        registry: Registry,
        depths: Callable[[], dict[str, int]],
        hives_up: Callable[[], tuple[int, int]],
        sync: Callable[[], SyncStatus | None] = lambda: None,
    ) -> None:
        """What is read at scrape time: the `registry`'s workers, the queue `depths` by model
        (`Admission.depths`), `hives_up` (online, registered) and self-heal's `sync` status."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "rbee_queen_requests",
            "Inference requests answered, by model and HTTP status",
            ["model", "status"],
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "rbee_queen_queue_seconds",
            "Time a request waited for a free worker slot",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft_seconds = Histogram(
            "rbee_queen_time_to_first_token_seconds",
            "Time from a request's arrival to the first byte of its worker's answer",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens_out = Counter(
            "rbee_queen_tokens_out",
            "Completion tokens relayed: the answer's usage, or one per streamed chunk",
            ["model"],
            registry=self.registry,
        )
        self.retries = Counter(
            "rbee_queen_retries",
            "Requests tried again on another worker before their first byte",
            ["model"],
            registry=self.registry,
        )
        self.timeouts = Counter(
            "rbee_queen_timeouts",
            "Timeouts by kind: connect, first_byte, idle, queue",
            ["model", "kind"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "rbee_queen_rejected",
            "Requests refused before reaching a worker, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.self_heal_actions = Counter(
            "rbee_queen_self_heal_actions",
            "Healing actions self-heal ran, by kind (hive, model, worker_binary, worker), "
            "op and result (ok, failed)",
            ["kind", "op", "result"],
            registry=self.registry,
        )
        self.scale_ups = Counter(
            "rbee_queen_scale_ups",
            "Workers spawned on demand for queued requests (a range of replicas), by result: "
            "ok, failed, no_room (no hive had room, the model or the memory for one), "
            "suspended (after `rbee down`, until the next apply)",
            ["model", "result"],
            registry=self.registry,
        )
        self.scale_up_seconds = Histogram(
            "rbee_queen_scale_up_seconds",
            "Time from a scale-up decision to the new worker taking requests",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.workers_retired = Counter(
            "rbee_queen_workers_retired",
            "Workers drained and stopped by the queen, by reason: idle (past idle_ttl) or "
            "retire (asked by POST /v1/workers/{id}/retire)",
            ["model", "reason"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(registry, depths, hives_up, sync))
        self._models: dict[str, ModelMetrics] = {}
        self._answered: dict[tuple[str, int], Counter] = {}

    def healed(self, action: Action, ok: bool) -> None:
        """Count one healing action and how it ended."""
        self.self_heal_actions.labels(action.kind, action.op, "ok" if ok else "failed").inc()

    def model(self, model: str) -> ModelMetrics:
        """The hot path's series of one model, looked up once per model."""
        found = self._models.get(model)
        if found is None:
            found = self._models[model] = ModelMetrics(
                queue_seconds=self.queue_seconds.labels(model),
                ttft_seconds=self.ttft_seconds.labels(model),
                tokens_out=self.tokens_out.labels(model),
                retries=self.retries.labels(model),
            )
        return found

    def answered(self, model: str, status: int) -> None:
        counter = self._answered.get((model, status))
        if counter is None:
            counter = self._answered[(model, status)] = self.requests.labels(model, str(status))
        counter.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class ModelMetrics:
    queue_seconds: Histogram
    ttft_seconds: Histogram
    tokens_out: Counter
    retries: Counter


class _StateCollector(Collector):
    """Gauges read at scrape time: queue depth, slots, workers and hives up, sync state."""

    def __init__(
        self,
        registry: Registry,
        depths: Callable[[], dict[str, int]],
        hives_up: Callable[[], tuple[int, int]],
        sync: Callable[[], SyncStatus | None],
    ) -> None:
        self._registry = registry
        self._depths = depths
        self._hives_up = hives_up
        self._sync = sync

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: what it reads may be built after the metrics (`rbee.queen.app`),
        so it is read at scrape time only, never when registered."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "rbee_queen_queue_depth", "Requests waiting for a free slot", labels=["model"]
        )
        for model, count in sorted(self._depths().items()):
            depth.add_metric([model], count)
        yield depth
        busy = GaugeMetricFamily(
            "rbee_queen_worker_slots_busy",
            "Slots the queen has claimed on each worker",
            labels=["worker", "model", "hive"],
        )
        total = GaugeMetricFamily(
            "rbee_queen_worker_slots", "Slots of each worker", labels=["worker", "model", "hive"]
        )
        up = GaugeMetricFamily(
            "rbee_queen_workers_up", "Live workers by model and state", labels=["model", "state"]
        )
        counts: dict[tuple[str, str], int] = {}
        for record in self._registry.live():
            beat = record.beat
            labels = [beat.worker_id, beat.model, beat.hive]
            busy.add_metric(labels, record.in_flight)
            total.add_metric(labels, beat.slots_total)
            key = (beat.model, beat.state)
            counts[key] = counts.get(key, 0) + 1
        for (model, state), count in sorted(counts.items()):
            up.add_metric([model, state], count)
        yield busy
        yield total
        yield up
        yield from _prompt_caches(self._registry.live())
        online, registered = self._hives_up()
        hives = GaugeMetricFamily("rbee_queen_hives_up", "Registered hives that answer /health")
        hives.add_metric([], online)
        yield hives
        known = GaugeMetricFamily("rbee_queen_hives", "Registered hives")
        known.add_metric([], registered)
        yield known
        sync = self._sync()
        if sync is not None:
            states = GaugeMetricFamily(
                "rbee_queen_sync_state",
                "1 for the cluster's state against the last apply, 0 for the others",
                labels=["state"],
            )
            for name in ("in_sync", "healing", "degraded", "suspended", "unknown"):
                states.add_metric([name], 1 if sync.state == name else 0)
            yield states
            loops = GaugeMetricFamily(
                "rbee_queen_crash_looping_workers",
                "Workers self-heal left down after they died too often",
                labels=["worker", "hive"],
            )
            for loop in sync.crash_loops:
                loops.add_metric([loop.worker_id, loop.hive], 1)
            yield loops


#: The prompt cache's counters a heartbeat carries, as the queen exports them:
#: (field of `PromptCacheStats`, metric name, help, counter or gauge).
_PROMPT_CACHE = (
    ("hits", "hits", "Requests that reused cached prompt tokens", True),
    ("misses", "misses", "Requests that read their whole prompt", True),
    ("ram_hits", "ram_hits", "Hits restored from the RAM cache into a slot", True),
    ("reused_tokens", "reused_tokens", "Prompt tokens found in the cache, not read", True),
    ("prompt_tokens", "prompt_tokens", "Prompt tokens of every request", True),
    ("evictions", "evictions", "RAM cache entries dropped for its byte budget", True),
    ("bytes", "bytes", "Bytes the RAM cache holds", False),
    ("entries", "entries", "Sequences the RAM cache holds", False),
)


def _prompt_caches(records: list[WorkerRecord]) -> Iterator[Metric]:
    """Each chat worker's prompt cache, as its last heartbeat reported it."""
    labels = ["worker", "model", "hive"]
    families = [
        (
            field,
            (CounterMetricFamily if counter else GaugeMetricFamily)(
                f"rbee_worker_prompt_cache_{name}", help_text, labels=labels
            ),
        )
        for field, name, help_text, counter in _PROMPT_CACHE
    ]
    for record in records:
        beat = record.beat
        if beat.prompt_cache is None:
            continue
        for field, family in families:
            family.add_metric(
                [beat.worker_id, beat.model, beat.hive], getattr(beat.prompt_cache, field)
            )
    for _, family in families:
        yield family
