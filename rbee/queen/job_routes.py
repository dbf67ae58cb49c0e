"""The job API's routes (`/v1/jobs`), thin handlers over `rbee.queen.jobs.Jobs`.

`POST /v1/jobs` (201 `JobCreated`), `GET /v1/jobs[?state=&limit=]`, `GET /v1/jobs/{id}`,
`GET /v1/jobs/{id}/events` (SSE) and `DELETE /v1/jobs/{id}` (cancel). Errors are OpenAI-style
bodies. Like the OpenAI routes, they need an inference or admin key (`rbee.queen.front`). A job
belongs to the key that submitted it: another inference key gets 404 for it and never lists
it; admin keys and the cluster token see every job.

`POST /v1/jobs` takes an `Idempotency-Key` header (1 to 255 printable ASCII characters, else a
400): the same request sent again with the same key by the same key's holder answers the job it
made (201 again, `Idempotent-Replayed: true`) instead of making a second; another request with
that key is a 422.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rbee.queen.front import PRINCIPAL
from rbee.queen.jobs import IdempotencyConflict, JobEnded, JobsFull, NoSuchJob, UnknownModel
from rbee.queen.keys import Principal
from rbee.wire import json_object, openai_error, sse
from rbee.wire.jobs import JOB_STATES, JobCreated, SubmitJob

if TYPE_CHECKING:
    from rbee.queen.jobs import Jobs

__all__ = ["JOB_ROUTES"]

_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def _jobs(request: Request) -> Jobs:
    jobs: Jobs = request.app.state.queen.jobs
    return jobs


def _caller(request: Request) -> Principal | None:
    principal: Principal | None = request.scope.get(PRINCIPAL)
    return principal


def _only_of(request: Request) -> str | None:
    """The owner whose jobs the caller may see: an inference key's own, else None (all)."""
    caller = _caller(request)
    return caller.name if caller is not None and caller.scope == "inference" else None


def _refuse(
    status: int, message: str, type_: str, code: str | None = None, retry_after: int | None = None
) -> JSONResponse:
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    return JSONResponse(openai_error(message, type_, code), status_code=status, headers=headers)


def _no_such_job(job_id: str) -> JSONResponse:
    return _refuse(404, f"no job {job_id!r} (or it was pruned)", "not_found_error", "job_not_found")


def _idempotency_key(request: Request) -> str | None:
    """The request's `Idempotency-Key`, if it sent one; ValueError if it is not one value of 1
    to 255 printable ASCII characters."""
    given = request.headers.getlist("idempotency-key")
    if not given:
        return None
    if len(given) > 1 or not _IDEMPOTENCY_KEY.fullmatch(given[0]):
        raise ValueError(
            "the Idempotency-Key header must be one value of 1 to 255 printable ASCII characters"
        )
    return given[0]


async def submit_job(request: Request) -> Response:
    try:
        idempotency_key = _idempotency_key(request)
        body = json_object(await request.body())
    except ValueError as exc:
        return _refuse(400, str(exc), "invalid_request_error")
    try:
        asked = SubmitJob.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return _refuse(422, f"{where}: {first['msg']}", "invalid_request_error")
    # A job counts against its key's rpm as a request does, and its answer against its tpm.
    caller = _caller(request)
    if caller is not None and (over := caller.over_limit()) is not None:
        message, retry_after = over
        return _refuse(429, message, "rate_limit_error", "rate_limit_exceeded", retry_after)
    spend = caller.limiter.spend if caller is not None and caller.limiter else None
    try:
        record, new = await _jobs(request).submit(
            asked, caller.name if caller else None, spend, idempotency_key
        )
    except IdempotencyConflict as exc:
        return _refuse(422, str(exc), "invalid_request_error", "idempotency_key_reused")
    except UnknownModel:
        message = f"the model {asked.model!r} does not exist"
        return _refuse(404, message, "invalid_request_error", "model_not_found")
    except JobsFull:
        message = "too many jobs are queued or running; retry later"
        return _refuse(503, message, "service_unavailable", "jobs_full", retry_after=30)
    created = JobCreated(job_id=record.job_id, sse_url=f"/v1/jobs/{record.job_id}/events")
    replayed = None if new else {"idempotent-replayed": "true"}
    return JSONResponse(created.model_dump(), status_code=201, headers=replayed)


async def list_jobs(request: Request) -> Response:
    state = request.query_params.get("state")
    if state is not None and state not in JOB_STATES:
        return _refuse(
            422, f"state must be one of {', '.join(JOB_STATES)}", "invalid_request_error"
        )
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        return _refuse(422, "limit must be a whole number from 1 to 1000", "invalid_request_error")
    records = await _jobs(request).stored(state, int(raw), _only_of(request))
    return JSONResponse({"jobs": [r.model_dump(mode="json") for r in records]})


async def get_job(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    try:
        record = await _jobs(request).get(job_id, _only_of(request))
        return JSONResponse(record.model_dump(mode="json"))
    except NoSuchJob:
        return _no_such_job(job_id)


async def cancel_job(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    try:
        record = await _jobs(request).cancel(job_id, _only_of(request))
        return JSONResponse(record.model_dump(mode="json"))
    except NoSuchJob:
        return _no_such_job(job_id)
    except JobEnded as exc:
        return _refuse(409, str(exc), "conflict", "job_ended")


async def job_events(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    try:
        events = await _jobs(request).follow(job_id, _only_of(request))
    except NoSuchJob:
        return _no_such_job(job_id)
    return StreamingResponse(events, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)


JOB_ROUTES = [
    Route("/v1/jobs", submit_job, methods=["POST"]),
    Route("/v1/jobs", list_jobs),
    Route("/v1/jobs/{job_id}", get_job),
    Route("/v1/jobs/{job_id}", cancel_job, methods=["DELETE"]),
    Route("/v1/jobs/{job_id}/events", job_events),
]
