"""What every worker route shares: OpenAI-shaped errors, reading a body into a request model,
giving up on a client that has gone, and the SSE response of a generation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from rbee.wire import json_object, openai_error, sse
from rbee.wire.chat import unsupported_field
from rbee.worker.engine import Generation

__all__ = [
    "ClientGone",
    "EventStream",
    "InFlight",
    "disconnected",
    "error",
    "generate",
    "invalid",
    "or_disconnect",
    "parse",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)


def error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(openai_error(message, type_, code), status_code=status, headers=headers)


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def or_disconnect(
    request: Request,
    awaitable: Awaitable[_T],
    discard: Callable[[_T], object] = lambda _: None,
) -> _T:
    """Await `awaitable` unless the client disconnects first: then cancel it (or `discard` what
    it produced in that same instant) and raise ClientGone."""
    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(disconnected(request.receive))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        raise
    finally:
        watch.cancel()
    if work in done:
        return work.result()
    work.cancel()
    await asyncio.wait({work})
    if not work.cancelled() and work.exception() is None:
        discard(work.result())
    raise ClientGone


async def disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def parse(request: Request, model: type[_M]) -> _M | Response:
    try:
        body = json_object(await request.body())
    except ValueError as exc:
        return error(400, str(exc), "invalid_request_error")
    request.state.json = body  # as the client sent it (`rbee.wire.prefix` hashes it so)
    unsupported = unsupported_field(body, model.model_fields)
    if unsupported is not None:
        return error(400, unsupported, "invalid_request_error", "unsupported_field")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        return error(400, invalid(exc), "invalid_request_error", "invalid_value")


def invalid(exc: ValidationError) -> str:
    """A validation error as a 400's message: its first error, named where it is."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return message if not where or message.startswith(where) else f"{where}: {message}"


class EventStream(Response):
    """`text/event-stream` of OpenAI chunks ending in `data: [DONE]`; stops generating when the
    client disconnects (uvicorn drops writes to a closed connection silently, so the
    disconnect has to be watched for)."""

    media_type = sse.MEDIA_TYPE

    def __init__(
        self, generation: Generation, first: dict[str, Any], on_close: Callable[[], None]
    ) -> None:
        # No `super().__init__`: it would announce a Content-Length for an empty body.
        self.status_code = 200
        self.background = None
        self.init_headers({**sse.HEADERS, sse.PROMPT_TOKENS: str(generation.prompt_tokens)})
        self._generation = generation
        self._first = first
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = asyncio.ensure_future(disconnected(receive))
        watch.add_done_callback(lambda _: self._generation.cancel())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for event in self._events():
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watch.cancel()
            self._generation.cancel()
            self._on_close()

    async def _events(self) -> AsyncIterator[bytes]:
        yield sse.json_event(self._first)
        try:
            async for chunk in self._generation:
                yield sse.json_event(chunk)
        except Exception as exc:
            # The status line is gone: report the failure in-band and end without [DONE].
            log.exception("generation failed mid-stream")
            yield sse.json_event(openai_error(f"generation failed: {exc}", "server_error"))
            return
        yield sse.DONE


class InFlight(Protocol):
    """The worker's count of requests in flight, which draining waits on."""

    def request_started(self) -> None: ...
    def request_finished(self) -> None: ...


async def generate(
    request: Request,
    worker: InFlight,
    start: Awaitable[Generation],
    respond: Callable[[Generation, dict[str, Any]], Response],
    *,
    stream: bool,
) -> Response:
    """Run a generation for `request`: `start` puts it into the batch, `respond` makes the
    response from it and its first chunk (or whole answer). A stream's response ends the
    request when it closes; every other outcome ends it here. Errors are OpenAI's: a prompt
    the worker refuses is a 400, a client gone a 499, a failure a 500."""
    worker.request_started()
    handed_off = False
    try:
        generation = await or_disconnect(request, start, Generation.cancel)
        try:
            # The first chunk (or the whole answer) is awaited here, so a bad prompt is
            # still an HTTP error rather than an error event inside a 200 stream.
            first = await or_disconnect(request, anext(generation))
        except BaseException:
            generation.cancel()
            raise
        response = respond(generation, first)
        handed_off = stream
        return response
    except ClientGone:
        return Response(status_code=499)
    except (ValueError, TypeError, KeyError) as exc:
        return error(400, str(exc), "invalid_request_error")
    except Exception as exc:
        log.exception("generation failed")
        return error(500, f"generation failed: {exc}", "server_error")
    finally:
        if not handed_off:
            worker.request_finished()
