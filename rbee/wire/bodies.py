"""HTTP bodies shared by the keeper, queen, hive and worker (DESIGN §4).

Field names here are contracts between processes: keep them stable.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rbee.defaults import BACKEND, Backend

__all__ = [
    "AddModel",
    "AddWorkerBinary",
    "Capabilities",
    "Gpu",
    "Health",
    "Heartbeat",
    "ModelEntry",
    "OperationEvent",
    "OperationStarted",
    "WorkerBinaryEntry",
    "WorkerState",
    "WorkerView",
    "openai_error",
]

WorkerState = Literal["loading", "idle", "busy", "draining"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Health(_Wire):
    """`GET /health` of every daemon."""

    status: Literal["ok"] = "ok"
    service: str
    version: str
    pid: int


class Heartbeat(_Wire):
    """What a worker sends to the queen every 2 s."""

    worker_id: str
    hive: str
    model: str
    worker_binary: str
    url: str
    pid: int
    device: str
    state: WorkerState
    slots_total: int = Field(ge=1)
    slots_busy: int = Field(ge=0)


class WorkerView(Heartbeat):
    """A worker as the queen's registry lists it."""

    last_seen_s: float = Field(description="seconds since the last heartbeat")
    in_flight: int = Field(description="requests the queen is relaying to it now")


class Gpu(_Wire):
    index: int
    name: str
    memory_total_mib: int


class Capabilities(_Wire):
    """`GET /v1/capabilities` of a hive."""

    hostname: str
    os: str
    arch: str
    cpu_count: int
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: list[Gpu] = []
    backends: list[str] = ["cpu"]


class AddModel(_Wire):
    """`POST /v1/models` of a hive."""

    name: str
    source: str
    sha256: str | None = None


class ModelEntry(_Wire):
    """A model in a hive's catalog."""

    name: str
    source: str
    sha256: str
    size_bytes: int
    path: str
    revision: str | None = Field(default=None, description="the Hub commit it came from")


class OperationStarted(_Wire):
    operation_id: str


class OperationEvent(_Wire):
    """One SSE event of `GET /v1/operations/{id}/events`."""

    operation_id: str
    state: Literal["running", "succeeded", "failed"]
    bytes_done: int = 0
    bytes_total: int | None = None
    message: str | None = Field(default=None, description="a line of the operation's log")
    error: str | None = None


class AddWorkerBinary(_Wire):
    """`POST /v1/worker-binaries` of a hive: provision an inference runtime.

    `spec` is the worker binary as declared in the cluster YAML; the hive stores it so a plan
    can tell when the declaration changed.
    """

    name: str
    backend: Backend = BACKEND
    path: str | None = Field(default=None, description="an existing Python runtime to use")
    build: bool = Field(default=False, description="build a venv with llama-cpp-python")
    llama_cpp_python: str | None = Field(
        default=None, description="pip version specifier of the build (default: the hive's)"
    )
    cmake_args: str | None = Field(default=None, description="CMAKE_ARGS of a build")
    spec: dict[str, Any] = {}

    @model_validator(mode="after")
    def _build_options_need_a_build(self) -> AddWorkerBinary:
        if not self.build and (self.cmake_args is not None or self.llama_cpp_python is not None):
            raise ValueError("cmake_args and llama_cpp_python need build: true")
        return self


class WorkerBinaryEntry(_Wire):
    """A worker binary in a hive's catalog: the Python that runs `llm-worker-rbee`."""

    name: str
    backend: Backend
    python: str
    llama_cpp_version: str
    spec: dict[str, Any] = {}


def openai_error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}
