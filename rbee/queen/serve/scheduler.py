"""Routing policies: which of a model's workers with a free slot takes the next request.

A policy (`rbee.queen.serve.worker.Policy`) only chooses; `Registry.claim` filters the
candidates (routable, healthy, a free slot) and takes the slot. The YAML picks the policy per
model (`serving.routing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rbee.queen.serve.worker import Policy, WorkerRecord

if TYPE_CHECKING:
    from rbee.config.models import Serving

__all__ = ["LEAST_LOADED", "LeastLoaded", "Policy", "PreferHive", "RoundRobin", "policy_for"]


class LeastLoaded:
    """The worker with the smallest share of its slots in use (the queen's count, or the
    worker's own when that is higher); among equals, the one picked longest ago, so requests
    spread evenly."""

    def choose(self, candidates: Sequence[WorkerRecord]) -> WorkerRecord:
        return min(candidates, key=lambda rec: (rec.load, rec.in_flight, rec.picked_at))


class RoundRobin:
    """Each worker in turn, whatever its load: the one picked longest ago."""

    def choose(self, candidates: Sequence[WorkerRecord]) -> WorkerRecord:
        return min(candidates, key=lambda rec: rec.picked_at)


class PreferHive:
    """Workers on one hive first (say, the GPU box), least loaded among them; the others only
    when that hive has no free slot."""

    def __init__(self, hive: str) -> None:
        self.hive = hive
        self._least_loaded = LeastLoaded()

    def choose(self, candidates: Sequence[WorkerRecord]) -> WorkerRecord:
        preferred = [rec for rec in candidates if rec.beat.hive == self.hive]
        return self._least_loaded.choose(preferred or candidates)


LEAST_LOADED = LeastLoaded()
_ROUND_ROBIN = RoundRobin()


def policy_for(serving: Serving | None) -> Policy:
    """The policy a model's `serving:` names (least loaded when the model is not declared)."""
    if serving is None or serving.routing == "least_loaded":
        return LEAST_LOADED
    if serving.routing == "round_robin":
        return _ROUND_ROBIN
    assert serving.prefer_hive is not None
    return PreferHive(serving.prefer_hive)
