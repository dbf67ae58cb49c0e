"""HTTP bodies shared by the keeper, queen, hive and worker (DESIGN §4).

Field names here are contracts between processes: keep them stable.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rbee.defaults import BACKEND, Backend, Device
from rbee.wire.prefix import MAX_REPORTED
from rbee.wire.processes import RpcServerProcess, WorkerProcess

__all__ = [
    "AddModel",
    "AddWorkerBinary",
    "Capabilities",
    "GgufFacts",
    "Gpu",
    "Health",
    "Heartbeat",
    "HiveState",
    "ModelEntry",
    "OperationEvent",
    "OperationStarted",
    "PromptCacheStats",
    "Purpose",
    "Renewal",
    "WorkerBinaryEntry",
    "WorkerState",
    "WorkerView",
    "openai_error",
]

WorkerState = Literal["loading", "idle", "busy", "draining"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)


class Health(_Wire):
    """`GET /health` of every daemon."""

    status: Literal["ok"] = "ok"
    service: str
    version: str
    pid: int
    name: str | None = Field(default=None, description="the hive's name in the YAML (hives only)")
    tls_expires_at: float | None = Field(
        default=None, description="when its TLS certificate expires (epoch s); none: no TLS"
    )


# What a heartbeat names (ids, YAML names, devices) is printed by `rbee worker list` and the
# status page: printable ASCII without spaces only, so a sender cannot write escape sequences
# into the operator's terminal.
_Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$")]


class PromptCacheStats(_Wire):
    """A chat worker's prompt cache: its slots' KV cells and the RAM cache behind them."""

    prompt_tokens: int = Field(default=0, description="prompt tokens of every request")
    reused_tokens: int = Field(default=0, description="of those, found in the cache: not read")
    hits: int = Field(default=0, description="requests that reused cached tokens")
    misses: int = Field(default=0, description="requests that read their whole prompt")
    ram_hits: int = Field(default=0, description="hits restored from RAM into a slot")
    saved: int = Field(default=0, description="sequences saved to RAM as their slot was taken")
    evictions: int = Field(default=0, description="RAM entries dropped for the byte budget")
    entries: int = Field(default=0, description="sequences held in RAM now")
    bytes: int = Field(default=0, description="bytes held in RAM now")
    budget: int = Field(default=0, description="the RAM cache's byte budget (0: off)")


class Heartbeat(_Wire):
    """What a worker sends to the queen every 2 s."""

    worker_id: _Label
    hive: _Label
    model: _Label
    worker_binary: _Label
    url: str = Field(pattern=r"^https?://[!-~]{1,2000}$")
    pid: int
    device: Device
    state: WorkerState
    slots_total: int = Field(ge=1)
    slots_busy: int = Field(ge=0)
    tls_expires_at: float | None = Field(
        default=None, description="when its TLS certificate expires (epoch s); none: no TLS"
    )
    socket: str | None = Field(
        default=None,
        max_length=107,
        description="a Unix socket it serves too: the queen on its machine relays there",
    )
    threads: int | None = Field(
        default=None, description="threads decoding its batch now (none: not a chat worker)"
    )
    prompt_cache: PromptCacheStats | None = Field(
        default=None, description="its prompt cache's counters (none: an embedding worker)"
    )
    prefixes: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        max_length=MAX_REPORTED,
        description="hashes of the prompt prefixes its KV cache holds (rbee.wire.prefix)",
    )


class Renewal(_Wire):
    """`PUT /v1/identity` of a hive or a worker: the renewed TLS identity the queen issued."""

    bundle: str = Field(max_length=16384, description="certificate, key and cluster CA (PEM)")


class WorkerView(Heartbeat):
    """A worker as the queen's registry lists it."""

    last_seen_s: float = Field(description="seconds since the last heartbeat")
    in_flight: int = Field(description="requests the queen is relaying to it now")
    idle_s: float | None = Field(
        default=None, description="seconds since its last request ended; null while busy"
    )
    healthy: bool = Field(default=True, description="false for a while after it failed a request")
    unhealthy_reason: str | None = Field(default=None, description="why it is passed over")


class Gpu(_Wire):
    """One NVIDIA GPU as nvidia-smi reports it (`index` is what `cuda:N` names)."""

    index: int
    name: str
    memory_total_mib: int
    memory_free_mib: int | None = None
    driver: str | None = None


class Capabilities(_Wire):
    """`GET /v1/capabilities` of a hive."""

    hostname: str
    os: str
    arch: str
    cpu_count: int
    ram_total_bytes: int
    ram_available_bytes: int
    python: str | None = Field(default=None, description="the hive's Python, e.g. 3.11")
    gpus: list[Gpu] = []
    backends: list[str] = ["cpu"]
    nvcc: str | None = Field(default=None, description="CUDA's compiler, for cuda builds")


class AddModel(_Wire):
    """`POST /v1/models` of a hive."""

    name: str
    source: str
    sha256: str | None = None
    peers: list[str] = Field(
        default=[],
        description="hives (base URLs) that have or are fetching this model: copy from them "
        "over the LAN first (sha256-checked), the source only if none can serve it",
    )
    revision: str | None = Field(
        default=None, description="the Hub commit the plan resolved: recorded for a peer's copy"
    )


#: What a model is for, as its GGUF header says: text generation (chat and completions),
#: vectors (`/v1/embeddings`) or relevance scores (`/v1/rerank`).
Purpose = Literal["chat", "embedding", "rerank"]


class GgufFacts(_Wire):
    """What a GGUF's header says: the model, what it is for, and what its context costs in
    memory."""

    architecture: str | None = None
    name: str | None = None
    parameters: int | None = None
    quantization: str | None = None
    context_length: int | None = Field(default=None, description="tokens it was trained for")
    chat_template: bool = False
    kv_bytes_per_token: int | None = Field(
        default=None, description="KV cache bytes per token of context (f16 cache)"
    )
    purpose: Purpose | None = Field(
        default=None,
        description="chat, embedding or rerank, from the pooling type, causal attention and "
        "architecture (unknown for facts recorded by an rbee that did not read it)",
    )
    layer_bytes: list[int] | None = Field(
        default=None,
        description="the weights' bytes of each block (blk.N.*), in order (unknown for facts "
        "recorded by an rbee that did not read them)",
    )
    input_bytes: int | None = Field(
        default=None,
        description="bytes of the tensors outside the blocks and the output layer (the token "
        "embeddings): llama.cpp keeps them on the CPU of the worker's machine",
    )
    output_bytes: int | None = Field(
        default=None, description="bytes of the output layer (output.*, output_norm.*)"
    )

    def describe(self) -> str:
        """`gemma3 268M Q4_K_M, ctx 32768, chat template`, or `bert 33.2M F16, ctx 512,
        embedding model` (what is known of it)."""
        parts = [p for p in (self.architecture, _count(self.parameters), self.quantization) if p]
        text = " ".join(parts)
        if self.context_length:
            text += f", ctx {self.context_length}"
        if self.purpose == "embedding":
            return text + ", embedding model"
        if self.purpose == "rerank":
            return text + ", reranker"
        return text + (", chat template" if self.chat_template else ", no chat template")


def _count(parameters: int | None) -> str | None:
    if not parameters:
        return None
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if parameters >= size:
            return f"{parameters / size:.3g}{unit}"
    return str(parameters)


class ModelEntry(_Wire):
    """A model in a hive's catalog."""

    name: str
    source: str
    sha256: str
    size_bytes: int
    path: str
    revision: str | None = Field(default=None, description="the Hub commit it came from")
    facts: GgufFacts | None = None
    damaged: str | None = Field(
        default=None,
        description="why the file on disk is no longer what was fetched (missing, other size, "
        "other sha256); such a model is fetched again",
    )


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
    url: str | None = Field(default=None, description="a llama-cpp-python wheel to install")
    sha256: str | None = Field(default=None, description="the wheel's sha256")
    llama_cpp_python: str | None = Field(
        default=None, description="pip version specifier of the build (default: the hive's)"
    )
    cmake_args: str | None = Field(default=None, description="CMAKE_ARGS of a build")
    peers: list[str] = Field(
        default=[],
        description="hives (base URLs) that build the same runtime: a build takes a peer's "
        "wheel when its platform matches instead of compiling again",
    )
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


class HiveState(_Wire):
    """`GET /v1/state` of a hive: all a plan observes of it, in one request (its health and
    the listings of `/v1/models`, `/v1/worker-binaries`, `/v1/worker-processes` and
    `/v1/capabilities`)."""

    health: Health
    models: list[ModelEntry]
    worker_binaries: list[WorkerBinaryEntry]
    workers: list[WorkerProcess]
    capabilities: Capabilities
    rpc_servers: list[RpcServerProcess] = Field(
        default_factory=list, description="this hive's RPC server, when a worker spans it"
    )


def json_object(raw: bytes | str) -> dict[str, Any]:
    """A request body as a JSON object; ValueError saying why it is not one (malformed, not an
    object, or nested too deep to parse, which would otherwise be a RecursionError: a 500)."""
    try:
        parsed = json.loads(raw)
    except RecursionError:
        raise ValueError("the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed JSON body: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError("the JSON body must be an object")
    return parsed


def openai_error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}
