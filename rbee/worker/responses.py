"""`POST /v1/responses`: OpenAI's Responses API, stateless, served by the chat path.

The request is translated into a chat request (`rbee.wire.responses`), which the worker's
chat model then reads as it reads any chat request: what chat refuses, Responses refuses
too, named as Responses names it. The engine's chat answer, or its chunks, are translated
back into the Responses object, or its named events.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.wire import json_object
from rbee.wire import responses as wire
from rbee.wire.chat import unsupported_field as chat_unsupported_field
from rbee.wire.response_events import ResponseBuilder, sse_event
from rbee.worker.chat import ChatRequest
from rbee.worker.engine import Engine, Generation
from rbee.worker.http import EventStream, error, generate, invalid, parse

__all__ = ["create_response"]

log = logging.getLogger(__name__)


class _Worker(Protocol):
    """What this route needs of the worker (`rbee.worker.app`)."""

    def chat_engine(self) -> Engine | Response: ...
    def request_started(self) -> None: ...
    def request_finished(self) -> None: ...


async def create_response(request: Request) -> Response:
    """Answer a Responses request, whole or as a stream of named events."""
    worker: _Worker = request.app.state.worker
    body = await _read(request)
    if isinstance(body, Response):
        return body
    chat = _chat(body)
    if isinstance(chat, Response):
        return chat
    engine = worker.chat_engine()
    if isinstance(engine, Response):
        return engine
    try:
        params = chat.params()
    except ValueError as exc:
        return error(400, str(exc), "invalid_request_error", "invalid_value")
    start = engine.start("chat", params, stream=body.stream, include_usage=True)

    def respond(generation: Generation, first: dict[str, Any]) -> Response:
        builder = ResponseBuilder(body, first["model"], first["created"])
        if not body.stream:
            return JSONResponse(builder.answer(first))
        return _ResponseEvents(generation, first, worker.request_finished, builder)

    return await generate(request, worker, start, respond, stream=body.stream)


async def _read(request: Request) -> wire.ResponsesRequest | Response:
    """The request, or a 400: a field rbee does not implement (named as Responses has it)
    before any value is read."""
    with contextlib.suppress(ValueError):  # not JSON: `parse` says so
        refused = wire.unsupported_field(json_object(await request.body()))
        if refused is not None:
            return error(400, refused, "invalid_request_error", "unsupported_field")
    return await parse(request, wire.ResponsesRequest)


def _chat(body: wire.ResponsesRequest) -> ChatRequest | Response:
    """The chat request the worker serves for `body`, or the 400 the chat path gives it."""
    translation = body.chat()
    refused = chat_unsupported_field(translation.body, ChatRequest.model_fields)
    if refused is not None:
        message = translation.in_responses_terms(refused)
        return error(400, message, "invalid_request_error", "unsupported_field")
    try:
        return ChatRequest.model_validate(translation.body)
    except ValidationError as exc:
        message = translation.in_responses_terms(invalid(exc))
        return error(400, message, "invalid_request_error", "invalid_value")


class _ResponseEvents(EventStream):
    """The generation's chat chunks as the Responses stream's named events."""

    def __init__(
        self,
        generation: Generation,
        first: dict[str, Any],
        on_close: Callable[[], None],
        builder: ResponseBuilder,
    ) -> None:
        super().__init__(generation, first, on_close)
        self._builder = builder

    async def _events(self) -> AsyncIterator[bytes]:
        builder = self._builder
        for event in [*builder.start(), *builder.feed(self._first)]:
            yield sse_event(event)
        try:
            async for chunk in self._generation:
                for event in builder.feed(chunk):
                    yield sse_event(event)
        except Exception as exc:
            # The status line is gone: report the failure in-band, as OpenAI does.
            log.exception("generation failed mid-stream")
            for event in builder.fail(f"generation failed: {exc}"):
                yield sse_event(event)
            return
        for event in builder.finish():
            yield sse_event(event)
