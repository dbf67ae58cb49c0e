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
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from rbee.queen.admission import Admission
    from rbee.queen.registry import Registry

__all__ = ["CONTENT_TYPE", "Metrics", "ModelMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # type: ignore[no-untyped-call]  # `*_created` series only double what Prometheus tracks itself

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """One queen's metrics, in a registry of their own (tests run several queens in-process)."""

    def __init__(
        self,
        registry: Registry,
        admission: Admission,
        hives_up: Callable[[], tuple[int, int]],
    ) -> None:
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
        self.registry.register(_StateCollector(registry, admission, hives_up))
        self._models: dict[str, ModelMetrics] = {}
        self._answered: dict[tuple[str, int], Counter] = {}

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
    """Gauges read at scrape time: queue depth, slots, workers and hives up."""

    def __init__(
        self, registry: Registry, admission: Admission, hives_up: Callable[[], tuple[int, int]]
    ) -> None:
        self._registry = registry
        self._admission = admission
        self._hives_up = hives_up

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "rbee_queen_queue_depth", "Requests waiting for a free slot", labels=["model"]
        )
        for model, count in sorted(self._admission.depths().items()):
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
        online, registered = self._hives_up()
        hives = GaugeMetricFamily("rbee_queen_hives_up", "Registered hives that answer /health")
        hives.add_metric([], online)
        yield hives
        known = GaugeMetricFamily("rbee_queen_hives", "Registered hives")
        known.add_metric([], registered)
        yield known
