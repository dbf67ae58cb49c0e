"""The job API's bodies and events (`/v1/jobs`): an OpenAI request the queen runs on its own,
which its caller follows by id instead of holding a connection open.

`POST /v1/jobs` takes `SubmitJob` and answers `JobCreated`; `GET /v1/jobs[/{id}]` gives
`JobRecord`s; `GET /v1/jobs/{id}/events` streams `JobEvent`s: `queued`, `position` (while it
waits), `assigned`, `first_token`, a `chunk` per OpenAI chunk, then `done` or `error`. An
embedding job (`input`) is answered whole: `queued`, `assigned`, then `done` with its vectors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

__all__ = [
    "ENDED",
    "JOB_STATES",
    "MAX_EMBEDDING_INPUTS",
    "Embedding",
    "EmbeddingResult",
    "EmbeddingUsage",
    "JobAssigned",
    "JobChunk",
    "JobCreated",
    "JobDone",
    "JobError",
    "JobEvent",
    "JobFirstToken",
    "JobKind",
    "JobList",
    "JobPosition",
    "JobQueued",
    "JobRecord",
    "JobResult",
    "JobState",
    "Priority",
    "SubmitJob",
    "chunk_text",
    "job_event",
]

Priority = Literal["interactive", "batch"]
JobKind = Literal["chat", "completion", "embedding"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
#: States a job never leaves.
ENDED: frozenset[JobState] = frozenset({"done", "failed", "cancelled"})
#: Inputs of one embedding job at most: OpenAI's bound for `/v1/embeddings`, the worker's too.
MAX_EMBEDDING_INPUTS = 2048


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)


class SubmitJob(BaseModel):
    """`POST /v1/jobs`: an OpenAI chat (`messages`), completion (`prompt`) or embeddings
    (`input`) body, plus `priority`. Every other OpenAI field goes to the worker as sent;
    `stream` is the queen's choice (the job's events are its stream)."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    model: str = Field(min_length=1)
    priority: Priority = Field(
        default="batch", description="interactive jobs go before batch ones; FIFO within each"
    )
    messages: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    prompt: str | list[str] | None = None
    input: str | list[str] | list[int] | list[list[int]] | None = Field(
        default=None,
        description="what an embedding job embeds: a string, strings, token ids or token-id "
        f"lists, at most {MAX_EMBEDDING_INPUTS}, none empty",
    )
    encoding_format: Literal["float", "base64"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SubmitJob:
        if sum(given is not None for given in (self.messages, self.prompt, self.input)) != 1:
            raise ValueError(
                "a job is a chat (`messages`), a completion (`prompt`) or embeddings (`input`): "
                "send one"
            )
        given = self.input
        if isinstance(given, list):
            if not given or any(not item for item in given if not isinstance(item, int)):
                raise ValueError("input: an empty list or string: there is nothing to embed")
            if len(given) > MAX_EMBEDDING_INPUTS and not isinstance(given[0], int):
                raise ValueError(
                    f"input: at most {MAX_EMBEDDING_INPUTS} inputs per job (got {len(given)})"
                )
        elif given == "":
            raise ValueError("input: an empty string: there is nothing to embed")
        return self

    @property
    def kind(self) -> JobKind:
        if self.messages is not None:
            return "chat"
        return "completion" if self.prompt is not None else "embedding"


class JobCreated(_Wire):
    """`POST /v1/jobs`' answer."""

    job_id: str
    sse_url: str = Field(description="the path of the job's event stream")


class JobResult(_Wire):
    """What a finished chat or completion job produced: its text, not every chunk."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = Field(description="chunks with text: one per token")


class Embedding(_Wire):
    """One vector of an embeddings answer, as OpenAI's `data` holds it."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="floats, or base64 of little-endian float32s (`encoding_format: base64`)"
    )


class EmbeddingUsage(_Wire):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResult(_Wire):
    """What a finished embedding job produced: its worker's answer's vectors and usage."""

    data: list[Embedding]
    usage: EmbeddingUsage


class JobRecord(_Wire):
    """A job as `GET /v1/jobs/{id}` shows it."""

    job_id: str
    priority: Priority
    model: str
    kind: JobKind
    state: JobState
    position: int | None = Field(
        default=None, description="while queued: its place among its model's jobs (1 is next)"
    )
    worker: str | None = None
    runs: int = Field(
        description="times it was started on a worker: 2 when the queen died while it ran"
    )
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: JobResult | EmbeddingResult | None = None
    error: str | None = None
    owner: str | None = Field(
        default=None,
        description="the key that submitted it (its name); other inference keys never see it",
    )


# --- `GET /v1/jobs/{id}/events`: the SSE stream, one JSON object each --------------------------


class JobList(_Wire):
    """`GET /v1/jobs`: the newest jobs of the caller, newest first."""

    jobs: list[JobRecord]


class JobQueued(_Wire):
    event: Literal["queued"] = "queued"
    position: int


class JobPosition(_Wire):
    """Its place in the queue changed (jobs ahead of it started or were cancelled)."""

    event: Literal["position"] = "position"
    position: int


class JobAssigned(_Wire):
    event: Literal["assigned"] = "assigned"
    worker: str
    run: int = Field(description="the job's `runs` with this one")


class JobFirstToken(_Wire):
    event: Literal["first_token"] = "first_token"
    after_s: float = Field(description="seconds since it was assigned")


class JobChunk(_Wire):
    """One OpenAI chunk, as the worker sent it."""

    event: Literal["chunk"] = "chunk"
    chunk: dict[str, Any]


class JobDone(_Wire):
    event: Literal["done"] = "done"
    result: JobResult | EmbeddingResult


class JobError(_Wire):
    """The last event of a job that failed or was cancelled."""

    event: Literal["error"] = "error"
    state: Literal["failed", "cancelled"]
    message: str


JobEvent = Annotated[
    JobQueued | JobPosition | JobAssigned | JobFirstToken | JobChunk | JobDone | JobError,
    Field(discriminator="event"),
]
_JOB_EVENT: TypeAdapter[JobEvent] = TypeAdapter(JobEvent)


def job_event(data: Any) -> JobEvent:
    """One event of a job's stream, from its JSON."""
    return _JOB_EVENT.validate_python(data)


def chunk_text(chunk: dict[str, Any]) -> str | None:
    """The text a streamed OpenAI chunk carries (a chat delta's content, or a completion's
    text); None for a chunk without text (the role, the finish)."""
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason"):
            return None
        text = (
            (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
        )
        return text if isinstance(text, str) else None
    return None
