"""Plan and apply, and the routes around them: status, down, the apply lock and history.

The apply lock is `Control`'s (its one owner): the apply route asks it for the lock before the
stream starts, so a second apply gets its 409 at once, and hands it to `Control.apply`, which
releases it when the apply ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rbee.apply.lock import LockNotFound
from rbee.config.models import Cluster, check_references
from rbee.errors import RbeeError
from rbee.plan.digest import redacted_plan
from rbee.queen.control.control import ApplyLocked, PlanOptions
from rbee.queen.http.errors import Refused, limit, parse_body
from rbee.queen.http.front import PRINCIPAL
from rbee.queen.http.state import queen_of
from rbee.wire import (
    ApplyEvent,
    ApplyRequest,
    DownRequest,
    ErrorEvent,
    ForceUnlock,
    History,
    LockAnswer,
    PlanRequest,
    SummaryEvent,
    Unlocked,
    sse,
)
from rbee.wire.plan import PLAN_FORMAT_VERSION, Plan

__all__ = [
    "apply_route",
    "down",
    "force_unlock",
    "get_lock",
    "history",
    "plan_route",
    "status",
]


def _cluster(data: dict[str, Any] | None) -> Cluster:
    """A request's `cluster`, validated as the keeper validated it."""
    try:
        cluster = Cluster.model_validate(data)
    except ValidationError as exc:
        message = f"invalid cluster: {exc.errors()[0]['msg']}"
        raise Refused(422, message, "invalid_request_error") from None
    problems = check_references(cluster)
    if problems:
        raise Refused(422, f"invalid cluster: {problems[0][1]}", "invalid_request_error")
    return cluster


def _options(body: PlanRequest | ApplyRequest) -> PlanOptions:
    return PlanOptions(targets=body.targets, refresh_only=body.refresh_only, prune=body.prune)


def _saved_plan(body: ApplyRequest) -> Plan | None:
    """A saved plan sent to apply, checked for a format this queen understands."""
    saved = body.plan
    if saved is None:
        return None
    if saved.format_version != PLAN_FORMAT_VERSION:
        message = (
            f"saved plan has format_version {saved.format_version}; "
            f"this queen reads {PLAN_FORMAT_VERSION}"
        )
        raise Refused(422, message, "invalid_request_error")
    if saved.refresh_only:
        raise Refused(422, "a refresh-only plan has no actions to apply", "invalid_request_error")
    return saved


async def plan_route(request: Request) -> JSONResponse:
    """A plan; to a plan key (CI on a pull request, which never applies) with every secret
    hidden, those its actions keep for apply included."""
    queen = queen_of(request)
    body = await parse_body(request, PlanRequest)
    cluster = _cluster(body.cluster)
    the_plan = await queen.control.plan(cluster, _options(body))
    if request.scope[PRINCIPAL].scope == "plan":
        return JSONResponse(redacted_plan(the_plan, (queen.token, cluster.queen.token)))
    return JSONResponse(the_plan.model_dump(mode="json"))


async def apply_route(request: Request) -> Response:
    queen = queen_of(request)
    control = queen.control
    body = await parse_body(request, ApplyRequest)
    saved = _saved_plan(body)
    cluster = _cluster(saved.cluster if saved else body.cluster)
    options = _options(body)
    holder = request.headers.get("x-rbee-holder", request.client.host if request.client else "?")
    parallelism = body.parallelism
    try:
        lock = await control.take_lock(holder, body.lock_timeout_s)
    except ApplyLocked as exc:
        raise Refused(409, exc.message, "conflict", "apply_locked") from None
    if await request.is_disconnected():  # the keeper gave up while waiting for the lock
        control.release_lock(lock.id)
        return Response(status_code=499)
    events: asyncio.Queue[ApplyEvent | None] = asyncio.Queue()

    async def run() -> None:
        try:
            outcome = await control.apply(
                cluster,
                holder,
                events.put,
                parallelism,
                options,
                saved,
                lock=lock,
                source=body.source,
            )
            await events.put(
                SummaryEvent(
                    ok=outcome.ok, done=outcome.done, failed=outcome.failed, skipped=outcome.skipped
                )
            )
        except RbeeError as exc:
            await events.put(ErrorEvent(error=exc.message, hint=exc.hint))
        finally:
            await events.put(None)
            queen.healer.poke("an apply ended")  # what it left is in sync, or healed now

    # The apply runs on even if the keeper disconnects; the stream only reports it.
    task = asyncio.create_task(run())
    queen.background.add(task)
    task.add_done_callback(queen.background.discard)

    async def stream() -> AsyncIterator[bytes]:
        while (event := await events.get()) is not None:
            yield sse.json_event(event.model_dump(mode="json"))

    return StreamingResponse(stream(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)


async def status(request: Request) -> JSONResponse:
    queen = queen_of(request)
    body = (await queen.control.status()).model_copy(update={"sync": queen.healer.sync})
    return JSONResponse(body.model_dump(mode="json"))


async def down(request: Request) -> JSONResponse:
    body = await parse_body(request, DownRequest)
    cluster = _cluster(body.cluster) if body.cluster is not None else None
    try:
        return JSONResponse((await queen_of(request).control.down(cluster)).model_dump(mode="json"))
    except ApplyLocked as exc:
        raise Refused(409, exc.message, "conflict", "apply_locked") from None


async def get_lock(request: Request) -> JSONResponse:
    lock = queen_of(request).control.current_lock()
    return JSONResponse(LockAnswer(lock=lock).model_dump(mode="json"))


async def force_unlock(request: Request) -> JSONResponse:
    body = await parse_body(request, ForceUnlock)
    try:
        unlocked = queen_of(request).control.force_unlock(body.id)
    except LockNotFound as exc:
        raise Refused(404, exc.message, "not_found_error", "lock_not_found") from None
    return JSONResponse(Unlocked(unlocked=unlocked).model_dump(mode="json"))


async def history(request: Request) -> JSONResponse:
    applies = queen_of(request).store.history(limit(request, 20))
    return JSONResponse(History(applies=applies).model_dump(mode="json"))
