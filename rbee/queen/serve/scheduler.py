"""Routing policies: which of a model's workers with a free slot takes the next request.

A policy (`rbee.queen.serve.worker.Policy`) only chooses; `Registry.claim` filters the
candidates (routable, healthy, a free slot) and takes the slot. The YAML picks the policy per
model (`serving.routing`).
"""

from __future__ import annotations

from collections.abc import Sequence

from rbee.config.models import Serving
from rbee.queen.serve.worker import Policy, WorkerRecord
from rbee.wire.prefix import EMPTY, Prefix

__all__ = [
    "LEAST_LOADED",
    "LeastLoaded",
    "Policy",
    "PreferHive",
    "PrefixAware",
    "RoundRobin",
    "affinity",
    "policy_for",
]


class LeastLoaded:
    """The worker with the smallest share of its slots in use (the queen's count, or the
    worker's own when that is higher); among equals, the one picked longest ago, so requests
    spread evenly."""

    def choose(self, candidates: Sequence[WorkerRecord], prefix: Prefix = EMPTY) -> WorkerRecord:
        return min(candidates, key=_least_loaded)


class RoundRobin:
    """Each worker in turn, whatever its load: the one picked longest ago."""

    def choose(self, candidates: Sequence[WorkerRecord], prefix: Prefix = EMPTY) -> WorkerRecord:
        return min(candidates, key=lambda rec: rec.picked_at)


class PreferHive:
    """Workers on one hive first (say, the GPU box), least loaded among them; the others only
    when that hive has no free slot."""

    def __init__(self, hive: str) -> None:
        self.hive = hive
        self._least_loaded = LeastLoaded()

    def choose(self, candidates: Sequence[WorkerRecord], prefix: Prefix = EMPTY) -> WorkerRecord:
        preferred = [rec for rec in candidates if rec.beat.hive == self.hive]
        return self._least_loaded.choose(preferred or candidates)


class PrefixAware:
    """The worker whose prompt cache holds the longest start of the request's prompt, less a
    penalty for its load so that a worker is not swamped by its own cache: the score is the
    share of the prompt cached there minus the share of its slots in use. When no worker
    holds any of it, or scores tie, the least loaded."""

    def choose(self, candidates: Sequence[WorkerRecord], prefix: Prefix = EMPTY) -> WorkerRecord:
        if not prefix.hashes:
            return min(candidates, key=_least_loaded)
        return min(candidates, key=lambda rec: (-affinity(rec, prefix), *_least_loaded(rec)))


def affinity(record: WorkerRecord, prefix: Prefix) -> float:
    """How much `record` suits a request beginning with `prefix`: the share of the prompt its
    cache holds, less the share of its slots in use."""
    return prefix.share(record.prefixes) - record.load


def _least_loaded(record: WorkerRecord) -> tuple[float, int, float]:
    return (record.load, record.in_flight, record.picked_at)


LEAST_LOADED = LeastLoaded()
_ROUND_ROBIN = RoundRobin()
_PREFIX = PrefixAware()
_DEFAULT = Serving()


def policy_for(serving: Serving | None) -> Policy:
    """The policy a model's `serving:` names (the default's when the model is not declared)."""
    if serving is None:
        serving = _DEFAULT
    if serving.routing == "least_loaded":
        return LEAST_LOADED
    if serving.routing == "round_robin":
        return _ROUND_ROBIN
    if serving.routing == "prefix":
        return _PREFIX
    assert serving.prefer_hive is not None
    return PreferHive(serving.prefer_hive)
