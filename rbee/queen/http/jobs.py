"""The job API's routes (`/v1/jobs`), thin handlers over `rbee.queen.serve.jobs.Jobs`.

`POST /v1/jobs` (201 `JobCreated`), `GET /v1/jobs[?state=&limit=]`, `GET /v1/jobs/{id}`,
`GET /v1/jobs/{id}/events` (SSE) and `DELETE /v1/jobs/{id}` (cancel). Errors are OpenAI-style
bodies. A job is a chat (`messages`), a completion (`prompt`) or embeddings (`input`), each
with its OpenAI fields. Like the OpenAI routes, they need an inference or admin key
(`rbee.queen.http.front`). A job belongs to the key that submitted it: another inference key
gets 404 for it and never lists it; admin keys and the cluster token see every job.

`POST /v1/jobs` takes an `Idempotency-Key` header (1 to 255 printable ASCII characters, else a
400): the same request sent again with the same key by the same key's holder answers the job it
made (201 again, `Idempotent-Replayed: true`) instead of making a second; another request with
that key is a 422.
"""

from __future__ import annotations

import asyncio
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rbee.queen.http.auth import Principal
from rbee.queen.http.errors import Refused, limit, parse_body
from rbee.queen.http.front import PRINCIPAL
from rbee.queen.http.state import queen_of
from rbee.queen.serve.jobs import (
    IdempotencyConflict,
    JobEnded,
    Jobs,
    JobsFull,
    NoSuchJob,
    UnknownModel,
)
from rbee.wire import sse
from rbee.wire.chat import IMPLEMENTED, unsupported_field
from rbee.wire.jobs import JOB_STATES, JobCreated, JobList, SubmitJob

__all__ = ["cancel_job", "get_job", "job_events", "list_jobs", "submit_job"]

_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_JSON = "application/json"


def _jobs(request: Request) -> Jobs:
    return queen_of(request).jobs


def _caller(request: Request) -> Principal | None:
    principal: Principal | None = request.scope.get(PRINCIPAL)
    return principal


def _only_of(request: Request) -> str | None:
    """The owner whose jobs the caller may see: an inference key's own, else None (all)."""
    caller = _caller(request)
    return caller.name if caller is not None and caller.scope == "inference" else None


def _no_such_job(job_id: str) -> Refused:
    return Refused(404, f"no job {job_id!r} (or it was pruned)", "not_found_error", "job_not_found")


def _idempotency_key(request: Request) -> str | None:
    """The request's `Idempotency-Key`, if it sent one; a 400 if it is not one value of 1 to
    255 printable ASCII characters."""
    given = request.headers.getlist("idempotency-key")
    if not given:
        return None
    if len(given) > 1 or not _IDEMPOTENCY_KEY.fullmatch(given[0]):
        message = (
            "the Idempotency-Key header must be one value of 1 to 255 printable ASCII characters"
        )
        raise Refused(400, message, "invalid_request_error")
    return given[0]


_JOB_FIELDS = IMPLEMENTED | {"priority"}
# OpenAI's embeddings fields (`user` is harmless to all); `dimensions` is refused below.
_EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "priority"})
_DIMENSIONS = (
    "dimensions: not supported: a GGUF does not say which shorter sizes its model was trained "
    "to keep (Matryoshka), so rbee serves each vector whole"
)
# A job's result is one answer's text: what only other parts of an answer carry (more
# choices, log-probabilities, tool calls) is refused for jobs at any value but its default.
_TEXT_ONLY: dict[str, object] = {
    "n": 1,
    "logprobs": False,
    "top_logprobs": 0,
    "tools": [],
    "tool_choice": "none",
    "parallel_tool_calls": True,
}


def _beyond_text(body: dict[str, object]) -> str | None:
    for name, default in _TEXT_ONLY.items():
        value = body.get(name)
        if value is not None and (type(value) is not type(default) or value != default):
            return f"{name}: a job's result holds one answer's text; ask /v1/chat/completions"
    return None


def _unsupported(asked: SubmitJob) -> str | None:
    """Why the job names what rbee does not implement for its kind (a 400), if it does."""
    body = asked.model_dump(exclude_unset=True)
    if asked.kind == "embedding":
        if body.get("dimensions") is not None:
            return _DIMENSIONS
        return unsupported_field(body, _EMBEDDING_FIELDS)
    return unsupported_field(body, _JOB_FIELDS) or _beyond_text(body)


async def submit_job(request: Request) -> Response:
    idempotency_key = _idempotency_key(request)
    asked = await parse_body(request, SubmitJob)
    # Refused now, not failed later at the worker: a job names what rbee does not implement.
    unsupported = _unsupported(asked)
    if unsupported is not None:
        raise Refused(400, unsupported, "invalid_request_error", "unsupported_field")
    # A job counts against its key's rpm as a request does, and its answer (an embedding
    # job's inputs) against its tpm.
    caller = _caller(request)
    if caller is not None and (over := caller.over_limit()) is not None:
        message, retry_after = over
        raise Refused(
            429, message, "rate_limit_error", "rate_limit_exceeded", retry_after=retry_after
        )
    spend = caller.limiter.spend if caller is not None and caller.limiter else None
    try:
        record, new = await _jobs(request).submit(
            asked, caller.name if caller else None, spend, idempotency_key
        )
    except IdempotencyConflict as exc:
        raise Refused(422, str(exc), "invalid_request_error", "idempotency_key_reused") from None
    except UnknownModel:
        message = f"the model {asked.model!r} does not exist"
        raise Refused(404, message, "invalid_request_error", "model_not_found") from None
    except JobsFull:
        message = "too many jobs are queued or running; retry later"
        raise Refused(503, message, "service_unavailable", "jobs_full", retry_after=30) from None
    created = JobCreated(job_id=record.job_id, sse_url=f"/v1/jobs/{record.job_id}/events")
    replayed = None if new else {"idempotent-replayed": "true"}
    return JSONResponse(created.model_dump(), status_code=201, headers=replayed)


async def list_jobs(request: Request) -> Response:
    state = request.query_params.get("state")
    if state is not None and state not in JOB_STATES:
        raise Refused(422, f"state must be one of {', '.join(JOB_STATES)}", "invalid_request_error")
    records = await _jobs(request).stored(state, limit(request, 100), _only_of(request))
    return JSONResponse(JobList(jobs=records).model_dump(mode="json"))


async def get_job(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    try:
        record = await _jobs(request).get(job_id, _only_of(request))
    except NoSuchJob:
        raise _no_such_job(job_id) from None
    # An embedding job's vectors are megabytes of JSON: written off the event loop.
    return Response(await asyncio.to_thread(record.model_dump_json), media_type=_JSON)


async def cancel_job(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    try:
        record = await _jobs(request).cancel(job_id, _only_of(request))
        return JSONResponse(record.model_dump(mode="json"))
    except NoSuchJob:
        raise _no_such_job(job_id) from None
    except JobEnded as exc:
        raise Refused(409, str(exc), "conflict", "job_ended") from None


async def job_events(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    try:
        events = await _jobs(request).follow(job_id, _only_of(request))
    except NoSuchJob:
        raise _no_such_job(job_id) from None
    return StreamingResponse(events, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
