"""The queen's own bodies: what the keeper and other clients send it and get back."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from rbee.errors import SshErrorKind
from rbee.wire.bodies import Capabilities, Gpu, WorkerView
from rbee.wire.plan import Plan
from rbee.wire.processes import RpcServerProcess

__all__ = [
    "ApiKey",
    "AppliedSource",
    "ApplyEvent",
    "ApplyRecord",
    "ApplyRequest",
    "ClusterStatus",
    "CrashLoop",
    "CreateKey",
    "CreatedKey",
    "DoneEvent",
    "DownRequest",
    "DownResult",
    "ErrorEvent",
    "FailedEvent",
    "ForceUnlock",
    "History",
    "HiveRecord",
    "HiveStatus",
    "KeyScope",
    "LockAnswer",
    "LockEvent",
    "LockState",
    "PlanEvent",
    "PlanRequest",
    "ProgressEvent",
    "QueenInfo",
    "RetryEvent",
    "SkippedEvent",
    "SpawnedEvent",
    "SshFacts",
    "SshImport",
    "SshTestRequest",
    "StartEvent",
    "SummaryEvent",
    "SyncStatus",
    "Unlocked",
    "apply_event",
]


#: What an API key may call: `inference` the OpenAI routes and jobs, `plan` plans and the
#: control plane's state (read-only, for CI on pull requests), `admin` everything.
KeyScope = Literal["inference", "plan", "admin"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)


class CreateKey(BaseModel):
    """`POST /v1/keys`."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    scope: KeyScope = "inference"
    rpm: int | None = Field(default=None, ge=1, description="requests a minute, unlimited if unset")
    tpm: int | None = Field(default=None, ge=1, description="tokens a minute, unlimited if unset")


class ApiKey(_Wire):
    """A key as `GET /v1/keys` lists it: never the secret, only its first characters."""

    name: str
    prefix: str
    scope: KeyScope
    rpm: int | None = None
    tpm: int | None = None
    created_at: float


class CreatedKey(ApiKey):
    """`POST /v1/keys`' answer: the only time the secret is shown."""

    key: str


# --- what the queen reports -----------------------------------------------------------------


class LockState(_Wire):
    """The apply lock: who holds it, since when, from which queen; `stale` when that queen is
    gone (`GET /v1/lock`, `POST /v1/lock/force-unlock`)."""

    id: str
    holder: str
    since: float
    apply_id: int | None = None
    queen_pid: int
    queen_started: float
    since_text: str = ""
    stale: bool = False

    def describe(self) -> str:
        """`held by HOLDER since TIME (lock ID ID)`, for messages."""
        return f"held by {self.holder} since {self.since_text} (lock ID {self.id})"


class AppliedSource(_Wire):
    """Which file an apply came from: its path, and its git commit when it is in a repository
    (`dirty` when the file differs from that commit)."""

    file: str
    commit: str | None = None
    dirty: bool = False


class ApplyRecord(_Wire):
    """One apply or self-heal in the queen's history (`GET /v1/history`)."""

    id: int
    kind: Literal["apply", "self-heal"] = "apply"
    holder: str
    started_at: float
    finished_at: float | None = None
    duration_s: float | None = None
    summary: dict[str, int] = Field(default_factory=dict, description="add, change, destroy")
    result: Literal["running", "ok", "failed", "interrupted"]
    lock_id: str | None = None
    done: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict, description="address → cause")
    skipped: list[str] = Field(default_factory=list)
    error: str | None = None
    digest: str | None = Field(default=None, description="sha256 of the applied cluster's JSON")
    source: AppliedSource | None = None
    reasons: dict[str, str] = Field(
        default_factory=dict, description="self-heal: address → why it acted"
    )
    trigger: str | None = Field(default=None, description="self-heal: what set it off")


class HiveRecord(_Wire):
    """A hive as the queen's registry last saw it (`GET /v1/hives`)."""

    name: str
    mode: Literal["local", "network"]
    host: str
    url: str
    state: Literal["unknown", "online", "offline"]
    version: str | None = None
    pid: int | None = None
    error: str | None = None
    checked_at: float | None = None
    online_at: float | None = None
    capabilities: Capabilities | None = None
    spec: dict[str, Any]


class HiveStatus(_Wire):
    """A hive of the last apply, checked now (part of `GET /v1/status`)."""

    name: str
    mode: Literal["local", "network"]
    url: str
    state: Literal["online", "offline"]
    models: list[str] = Field(default_factory=list)
    model_facts: dict[str, str | None] = Field(default_factory=dict)
    gpus: list[Gpu] = Field(default_factory=list)
    worker_processes: int = 0
    rpc_servers: list[RpcServerProcess] = Field(
        default_factory=list,
        description="the hive's RPC server, lending its devices to a worker that spans it",
    )
    error: str | None = None


class QueenInfo(_Wire):
    url: str


class CrashLoop(_Wire):
    """A worker self-heal stopped respawning: it died too often, too fast."""

    worker_id: str
    hive: str
    address: str
    deaths: int
    window_s: float
    error: str | None = Field(default=None, description="how its last start failed, if it did")
    log_tail: str = Field(default="", description="the last lines of its log")


class SyncStatus(_Wire):
    """Whether the cluster matches the last apply, as self-heal last found it.

    `in_sync`: nothing to do. `healing`: self-heal is acting now. `degraded`: something differs
    that self-heal cannot mend now (see `reasons`). `suspended`: `rbee down` stopped the cluster,
    so nothing is healed until the next apply. `unknown`: nothing applied or not checked yet.
    """

    state: Literal["in_sync", "healing", "degraded", "suspended", "unknown"] = "unknown"
    reasons: list[str] = Field(default_factory=list)
    self_heal: bool = Field(default=True, description="whether self-heal acts (the YAML's)")
    checked_at: float | None = None
    crash_loops: list[CrashLoop] = Field(default_factory=list)


class ClusterStatus(_Wire):
    """`GET /v1/status`: the hives of the last apply and the live workers."""

    queen: QueenInfo
    hives: list[HiveStatus]
    workers: list[WorkerView]
    applied: ApplyRecord | None = Field(default=None, description="the last apply")
    sync: SyncStatus = Field(default_factory=SyncStatus)


class DownResult(_Wire):
    """`POST /v1/down`."""

    stopped_workers: int
    stopped_hives: list[str]


# --- `POST /v1/apply`: the SSE stream of events, one JSON object each -----------------------


class _Event(_Wire):
    pass


class LockEvent(LockState):
    """The apply holds the lock (first event of every apply)."""

    event: Literal["lock"] = "lock"


class PlanEvent(_Event):
    """The plan being applied (a `Plan` as JSON)."""

    event: Literal["plan"] = "plan"
    plan: dict[str, Any]


class StartEvent(_Event):
    event: Literal["start"] = "start"
    address: str
    op: str


class ProgressEvent(_Event):
    """A long action's progress: a line of text, or bytes of a download."""

    event: Literal["progress"] = "progress"
    address: str
    message: str | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None


class SpawnedEvent(_Event):
    """A worker process exists (an effect that must not be repeated blindly)."""

    event: Literal["spawned"] = "spawned"
    address: str
    pid: int


class RetryEvent(_Event):
    event: Literal["retry"] = "retry"
    address: str
    attempt: int
    error: str
    delay_s: float


class DoneEvent(_Event):
    event: Literal["done"] = "done"
    address: str
    elapsed_s: float


class SkippedEvent(_Event):
    """Not run: an action it depends on failed or was skipped."""

    event: Literal["skipped"] = "skipped"
    address: str
    because: list[str]


class FailedEvent(_Event):
    event: Literal["failed"] = "failed"
    address: str
    error: str


class SummaryEvent(_Event):
    """The last event of an apply that ran."""

    event: Literal["summary"] = "summary"
    ok: bool
    done: list[str]
    failed: dict[str, str]
    skipped: list[str]


class ErrorEvent(_Event):
    """The apply stopped before or instead of running (a stale saved plan, say)."""

    event: Literal["error"] = "error"
    error: str
    hint: str | None = None


ApplyEvent = Annotated[
    LockEvent
    | PlanEvent
    | StartEvent
    | ProgressEvent
    | SpawnedEvent
    | RetryEvent
    | DoneEvent
    | SkippedEvent
    | FailedEvent
    | SummaryEvent
    | ErrorEvent,
    Field(discriminator="event"),
]
_APPLY_EVENT: TypeAdapter[ApplyEvent] = TypeAdapter(ApplyEvent)


def apply_event(data: Any) -> ApplyEvent:
    """One event of the apply stream, from its JSON."""
    return _APPLY_EVENT.validate_python(data)


# --- control-plane requests ---------------------------------------------------------------


class PlanRequest(_Wire):
    """`POST /v1/plan`. `cluster` is the YAML as JSON, validated by the queen as the keeper did."""

    cluster: dict[str, Any]
    targets: list[str] = Field(default_factory=list, description="resource addresses to limit to")
    refresh_only: bool = False
    prune: bool | None = Field(default=None, description="override the YAML's `prune`")


class ApplyRequest(_Wire):
    """`POST /v1/apply`: a cluster to plan and apply, or a saved plan (`plan`) to apply."""

    cluster: dict[str, Any] | None = None
    plan: Plan | None = None
    targets: list[str] = Field(default_factory=list)
    refresh_only: bool = False
    prune: bool | None = None
    parallelism: int = Field(default=10, ge=1, le=1000)
    source: AppliedSource | None = Field(default=None, description="the YAML it came from")
    lock_timeout_s: float = Field(
        default=0.0, ge=0, description="how long to wait for the apply lock (0: fail at once)"
    )


class DownRequest(_Wire):
    """`POST /v1/down`: also the hives of `cluster`, besides those of the last apply."""

    cluster: dict[str, Any] | None = None


class LockAnswer(_Wire):
    """`GET /v1/lock`: the apply lock, null when free."""

    lock: LockState | None


class Unlocked(_Wire):
    """`POST /v1/lock/force-unlock`: the lock that was removed."""

    unlocked: LockState


class History(_Wire):
    """`GET /v1/history`: the last applies and heals, newest first."""

    applies: list[ApplyRecord]


class SshTestRequest(_Wire):
    """`POST /v1/ssh-test`: a hive of the YAML, as JSON, for the queen to probe over SSH."""

    hive: dict[str, Any]


class SshFacts(_Wire):
    """A network hive's machine as one SSH probe saw it (also `POST /v1/ssh-test`'s answer)."""

    reachable: bool
    error_kind: SshErrorKind | None = None
    error: str | None = None
    os: str | None = None
    arch: str | None = None
    python_version: str | None = None
    rbee_version: str | None = None
    hive_running: bool = False
    hive_pid: int | None = None
    hive_port: int | None = None
    free_disk_bytes: int | None = None


class SshImport(_Wire):
    """`POST /v1/hives/import-ssh`: the queen's ~/.ssh/config Host entries as YAML hive
    stanzas (JSON), and the file they came from."""

    path: str
    hives: list[dict[str, Any]]


class ForceUnlock(_Wire):
    """`POST /v1/lock/force-unlock`."""

    id: str = Field(min_length=1, description="the lock's ID, as the refusal names it")
