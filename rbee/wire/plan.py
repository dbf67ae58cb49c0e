"""The plan as a value: actions with reasons and field changes, notes, the summary. It crosses
processes (the queen plans, the keeper shows and saves it, apply sends it back), so it lives
with the other wire types; the planner (`rbee.plan`) makes it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

import rbee
from rbee.wire.bodies import AddWorkerBinary
from rbee.wire.processes import SpawnRpcServer, SpawnWorker

__all__ = ["PLAN_FORMAT_VERSION", "Action", "Change", "DeviceShare", "Note", "Op", "Plan"]

PLAN_FORMAT_VERSION = 1

Op = Literal["create", "update", "replace", "delete"]


class Change(BaseModel):
    """One field that differs between what runs and what is declared."""

    field: str
    old: Any = None
    new: Any = None


class DeviceShare(BaseModel):
    """What one device holds of a worker split over several: its layers (of the blocks and
    the output layer), their weights and their KV cache, in bytes."""

    hive: str
    device: str = Field(description="cpu or cuda:N of that hive")
    rpc: bool = Field(default=False, description="lent by that hive's RPC server")
    layers: int
    weights_bytes: int
    kv_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes


class Action(BaseModel):
    """One change to one resource, with why and what it waits for."""

    address: str
    kind: Literal["hive", "worker_binary", "model", "worker", "rpc_server"]
    op: Op
    hive: str
    reason: str
    changes: list[Change] = []
    depends_on: list[str] = []
    hive_url: str | None = None
    hive_mode: Literal["local", "network"] | None = None
    install: bool = False
    model: str | None = None
    source: str | None = None
    sha256: str | None = None
    revision: str | None = None
    peers: list[str] = []
    pid: int | None = None
    binary: AddWorkerBinary | None = None
    spawn: SpawnWorker | None = None
    rpc_server: SpawnRpcServer | None = None
    placement: list[DeviceShare] = Field(
        default_factory=list,
        description="a worker split over several devices: where its weights and KV cache go",
    )


class Note(BaseModel):
    """Something the plan says about a resource without acting on it."""

    address: str
    message: str


class Plan(BaseModel):
    """An ordered list of actions: a value that can be printed, saved and applied.

    `observed_digest` fingerprints the facts the plan was made from: a saved plan is applied
    only while a fresh observation gives the same digest.
    """

    format_version: int = PLAN_FORMAT_VERSION
    rbee_version: str = rbee.__version__
    created_at: float = 0.0
    refresh_only: bool = False
    targets: list[str] = []
    observed_digest: str = ""
    cluster: dict[str, Any] = {}
    actions: list[Action] = []
    drift: list[Note] = []
    unmanaged: list[Note] = []
    errors: list[Note] = []
    scaling: list[Note] = Field(
        default_factory=list,
        description="each deployment with a range of replicas, per hive: its range and how "
        "many workers run (the queen scales within the range; no change while within it)",
    )

    @property
    def has_changes(self) -> bool:
        return bool(self.actions or self.drift)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def summary(self) -> dict[str, int]:
        """`add`, `change` and `destroy` counts, as in the summary line."""
        return self.counts()

    def counts(self) -> dict[str, int]:
        """How many resources are added, changed and destroyed (a replace counts as a change)."""
        ops = [a.op for a in self.actions]
        return {
            "add": ops.count("create"),
            "change": ops.count("update") + ops.count("replace"),
            "destroy": ops.count("delete"),
        }
