"""What the queen observed of the cluster: the planner's second input, as plain values."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from rbee.wire import (
    Capabilities,
    ModelEntry,
    RpcServerProcess,
    SshFacts,
    WorkerBinaryEntry,
    WorkerProcess,
    WorkerView,
)

__all__ = ["HiveFacts", "Observed", "SourceFacts", "SshFacts"]


class HiveFacts(BaseModel):
    """One hive as seen now: whether its daemon answers, and its listings when it does."""

    name: str
    running: bool
    url: str | None = None
    mode: Literal["local", "network"] = "local"
    error: str | None = None
    models: list[ModelEntry] = []
    worker_binaries: list[WorkerBinaryEntry] = []
    workers: list[WorkerProcess] = []
    rpc_servers: list[RpcServerProcess] = []
    capabilities: Capabilities | None = None
    ssh: SshFacts | None = None


class SourceFacts(BaseModel):
    """A model source as the queen resolved it while planning (hf:// only: one HEAD each)."""

    sha256: str | None = None
    revision: str | None = None
    size_bytes: int | None = None
    error: str | None = Field(default=None, description="why it cannot be fetched, if so")
    transient: bool = False


class Observed(BaseModel):
    """Every hive's facts (declared ones and ones the queen still knows) plus the heartbeat
    registry (live workers and silenced ones), taken at time `at` (seconds since the epoch)."""

    at: float = 0.0
    hives: dict[str, HiveFacts] = {}
    registry: list[WorkerView] = []
    silenced: dict[str, int] = Field(
        default_factory=dict,
        description="workers (id → pid) that heartbeated, then stopped: hung or dead",
    )
    sources: dict[str, SourceFacts] = {}
    heard_from: float = Field(
        default=0.0,
        description="since when (epoch seconds) a missing heartbeat means a silent worker: "
        "the queen's start plus the heartbeat TTL, so a restarted queen adopts workers that "
        "have not had the time to beat to it yet",
    )
