"""The queen's log routes: its own log, and a hive's or a worker's, fetched from that hive.

`GET /v1/logs/queen`, `GET /v1/logs/hives/{name}` and `GET /v1/logs/workers/{worker_id}` take
the hive's query (`LogQuery`: lines, since, follow) and pass it on; a hive's answer, an error
included, comes back as the hive sent it. Local and network hives alike are reached over the
cluster's mutual TLS, never over SSH.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from rbee.clients import HiveClient
from rbee.errors import UnavailableError
from rbee.logsource import log_response, own_log
from rbee.queen.http.errors import Refused
from rbee.queen.http.state import QueenState, queen_of
from rbee.wire import sse
from rbee.wire.logs import LogQuery

if TYPE_CHECKING:
    from rbee.config.models import Hive

__all__ = ["hive_log", "queen_log", "worker_log"]


async def queen_log(request: Request) -> Response:
    """The queen's own log: the file its output goes to, or its systemd unit's journal."""
    query = _query(request)
    source = own_log()
    if source is None:
        message = "the queen's output goes to a terminal or a pipe, not to a log file"
        raise Refused(404, message, "not_found_error", "no_log")
    return await log_response(source, query)


async def hive_log(request: Request) -> Response:
    """A hive's own log, from that hive."""
    query = _query(request)
    queen = queen_of(request)
    name = request.path_params["name"]
    hive = next((h for h in queen.hive_registry.hives() if h.name == name), None)
    if hive is None:
        raise Refused(404, f"no hive named {name!r} is registered", "not_found_error")
    return await _relay(hive, "/v1/logs", query)


async def worker_log(request: Request) -> Response:
    """A worker's log, from the hive it runs on (or ran on: the log outlives the worker)."""
    query = _query(request)
    queen = queen_of(request)
    worker_id = request.path_params["worker_id"]
    hive = _hive_of(queen, worker_id)
    if hive is None:
        message = f"no live worker {worker_id!r}, and no registered hive its id starts with"
        raise Refused(404, message, "not_found_error")
    return await _relay(hive, f"/v1/worker-logs/{worker_id}", query)


def _hive_of(queen: QueenState, worker_id: str) -> Hive | None:
    """The hive of a live worker by its heartbeats; of a gone one by its id (`HIVE.MODEL.N`)."""
    hives = queen.hive_registry.hives()
    record = queen.registry.get(worker_id)
    if record is not None:
        return next((h for h in hives if h.name == record.beat.hive), None)
    named = [h for h in hives if worker_id.startswith(f"{h.name}.")]
    return max(named, key=lambda h: len(h.name), default=None)


async def _relay(hive: Hive, path: str, query: LogQuery) -> Response:
    """The hive's answer at `path`, streamed on as it comes."""
    opened = contextlib.AsyncExitStack()
    try:
        client = await opened.enter_async_context(HiveClient(hive.url, hive.name))
        answer = await opened.enter_async_context(client.log_stream(path, query))
        if answer.status_code >= 400:
            refusal = await answer.aread()
            await opened.aclose()
            return Response(
                refusal, answer.status_code, media_type=answer.headers.get("content-type")
            )
    except UnavailableError as exc:
        await opened.aclose()
        message = f"hive {hive.name}: {exc.message}"
        raise Refused(502, message, "bad_gateway", "hive_unreachable") from None

    async def body() -> AsyncIterator[bytes]:
        async with opened:  # the hive's stream closes when this one ends or its reader goes
            async for chunk in answer.aiter_raw():
                yield chunk

    media_type = answer.headers.get("content-type")
    return StreamingResponse(body(), media_type=media_type, headers=sse.HEADERS)


def _query(request: Request) -> LogQuery:
    try:
        return LogQuery.parse(request.query_params)
    except ValueError as exc:
        raise Refused(422, str(exc), "invalid_request_error") from None
