"""What the queen observed of the cluster: the planner's second input, as plain values."""

from __future__ import annotations

from pydantic import BaseModel

from rbee.wire import ModelEntry, WorkerProcess, WorkerView

__all__ = ["HiveFacts", "Observed"]


class HiveFacts(BaseModel):
    """One hive as seen now: whether its daemon answers, and its listings when it does."""

    name: str
    running: bool
    error: str | None = None
    models: list[ModelEntry] = []
    workers: list[WorkerProcess] = []


class Observed(BaseModel):
    """Every hive's facts plus the queen's heartbeat registry."""

    hives: dict[str, HiveFacts] = {}
    registry: list[WorkerView] = []
