"""The worker's HTTP face: /health, OpenAI-compatible completions, and its lifecycle.

Lifecycle: `loading` while the model loads in the background (inference answers 503), then
`idle` or `busy` by slot use, then `draining` after SIGTERM: new requests get 503, requests
already accepted finish, and the server stops once none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from rbee import __version__
from rbee.pki import Identity
from rbee.wire import (
    Health,
    Heartbeat,
    Renewal,
    WorkerArgs,
    WorkerState,
    json_object,
    openai_error,
    sse,
)
from rbee.wire.chat import unsupported_field
from rbee.worker.engine import Engine, Generation, Kind
from rbee.worker.heartbeat import HeartbeatSender

__all__ = ["SERVICE", "create_app"]

log = logging.getLogger(__name__)

SERVICE = WorkerArgs.SCRIPT
# Accepted requests get this long to finish after SIGTERM; the hive's SIGKILL may come sooner.
_DRAIN_TIMEOUT_S = 300.0
# At exit, the decode loop gets this long to end its step before the context is freed.
_CLOSE_TIMEOUT_S = 10.0

_T = TypeVar("_T")
_STOPS = 4
_STOP_CHARS = 256


class StreamOptions(BaseModel):
    """`stream_options`: OpenAI's, with a stream only."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Sampling(BaseModel):
    """The request fields rbee passes to llama-cpp (a field it does not implement is refused
    before this model reads the body: `rbee.wire.chat.unsupported_field`)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # the queen routes by model; this worker serves its own regardless
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, description="llama.cpp's; 0 turns it off")
    min_p: float | None = Field(default=None, ge=0, le=1, description="llama.cpp's")
    repeat_penalty: float | None = Field(default=None, gt=0, description="llama.cpp's")
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _options_need_a_stream(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only with stream: true")
        return self

    @field_validator("stop")
    @classmethod
    def _bounded(cls, stop: str | list[str] | None) -> str | list[str] | None:
        """OpenAI's own bound, up to 4 stop strings, and a length: each is matched against the
        text of every new token, so a request cannot slow the batch it decodes in."""
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > _STOPS:
            raise ValueError(f"at most {_STOPS} stop strings (got {len(stops)})")
        if any(len(one) > _STOP_CHARS for one in stops):
            raise ValueError(f"a stop string has at most {_STOP_CHARS} characters")
        return stop

    def params(self) -> dict[str, Any]:
        """The sampling settings and prompt the engine takes."""
        params = self.model_dump(
            exclude_none=True,
            exclude={"model", "stream", "max_completion_tokens", "stream_options"},
        )
        if self.max_tokens is None and self.max_completion_tokens is not None:
            params["max_tokens"] = self.max_completion_tokens
        return params


class _ChatRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _text_only(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [_text_message(i, message) for i, message in enumerate(messages)]


_ROLES = frozenset({"system", "developer", "user", "assistant"})


def _text_message(index: int, message: dict[str, Any]) -> dict[str, Any]:
    """A chat message as the chat template takes it: `content` a string. A list of `text`
    parts is joined; an assistant turn may have no content. What the worker cannot read
    (tool calls and results, images, audio) is an error naming where it is."""
    where = f"messages.{index}"
    role = message.get("role")
    if role not in _ROLES:
        raise ValueError(f"{where}.role: {role!r} is not supported (one of {sorted(_ROLES)})")
    for field in ("tool_calls", "function_call"):
        if message.get(field):
            raise ValueError(f"{where}.{field}: tool calls are not supported")
    content = message.get("content")
    if content is None and role == "assistant":
        content = ""
    elif isinstance(content, list):
        parts = []
        for number, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(
                    f"{where}.content.{number}: only text parts are supported (got {kind!r}; "
                    "this model has no projector for images or audio)"
                )
            parts.append(part["text"])
        content = "\n".join(parts)
    elif not isinstance(content, str):
        raise ValueError(f"{where}.content: a string or a list of text parts")
    return {"role": role, "content": content}


class _CompletionRequest(_Sampling):
    prompt: str | list[str]

    def params(self) -> dict[str, Any]:
        params = super().params()
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise ValueError("prompt: this worker takes one prompt per request")
            params["prompt"] = self.prompt[0]
        return params


class _Worker:
    """The worker's state: engine, heartbeat, drain, and requests in flight."""

    def __init__(self, config: WorkerArgs, token: str | None, identity: Identity | None) -> None:
        self.config = config
        self.identity = identity
        self.engine = Engine(config, on_change=self._state_may_have_changed)
        tls = identity.client if identity else None
        self.heartbeat = HeartbeatSender(config.queen_url, token, self.snapshot, tls=tls)
        self.draining = False
        self.exit_code = 0
        self.in_flight = 0
        self._none_in_flight = asyncio.Event()
        self._none_in_flight.set()
        self._last_state: WorkerState = "loading"
        self._stop_server: Callable[[], None] = lambda: None
        self._drain_task: asyncio.Task[None] | None = None

    @property
    def state(self) -> WorkerState:
        """loading → idle/busy → draining (DESIGN §4)."""
        if self.draining:
            return "draining"
        if not self.engine.loaded:
            return "loading"
        return "busy" if self.engine.slots_busy else "idle"

    def snapshot(self) -> Heartbeat:
        """This worker as the queen sees it."""
        config = self.config
        return Heartbeat(
            worker_id=config.worker_id,
            hive=config.hive,
            model=config.model,
            worker_binary=config.worker_binary,
            url=config.url,
            pid=os.getpid(),
            device=config.device,
            state=self.state,
            slots_total=self.engine.slots_total,
            slots_busy=self.engine.slots_busy,
            tls_expires_at=self.identity.expires_at if self.identity else None,
        )

    def _state_may_have_changed(self) -> None:
        state = self.state
        if state != self._last_state:
            # idle/busy flip on every request: only the lifecycle steps are worth INFO.
            level = logging.DEBUG if {state, self._last_state} == {"idle", "busy"} else logging.INFO
            log.log(level, "state=%s previous=%s", state, self._last_state)
            self._last_state = state
            self.heartbeat.poke()

    def refusal(self) -> Response | None:
        """A 503 while the worker cannot take requests (loading, draining), else None."""
        state = self.state
        if state == "loading":
            return _error(503, "the model is still loading", "server_error", "loading")
        if state == "draining":
            return _error(503, "this worker is shutting down", "server_error", "draining")
        return None

    def request_started(self) -> None:
        """Count a request as accepted: draining waits for it."""
        self.in_flight += 1
        self._none_in_flight.clear()

    def request_finished(self) -> None:
        """The request's response has been sent (or its client has gone)."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._none_in_flight.set()

    async def load(self) -> None:
        """Load the model; if that fails the worker has nothing to serve and stops with 1."""
        started = time.monotonic()
        try:
            await self.engine.load()
        except Exception as exc:
            log.error("cannot load model path=%s error=%s", self.config.model_path, exc)
            self.exit_code = 1
            self._stop_server()
            return
        log.info("model loaded model=%s load_s=%.2f", self.config.model, time.monotonic() - started)

    def install_signal_handlers(self) -> None:
        """Make SIGTERM drain instead of stopping at once; a second SIGTERM stops at once."""
        server = _running_uvicorn_server()
        if server is None:
            return
        self._stop_server = lambda: setattr(server, "should_exit", True)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self) -> None:
        if self.draining:
            log.info("second SIGTERM: stopping now in_flight=%d", self.in_flight)
            self._stop_server()
            return
        self.draining = True
        self._state_may_have_changed()
        log.info("SIGTERM: draining in_flight=%d", self.in_flight)
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self._none_in_flight.wait(), _DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("drain timed out in_flight=%d", self.in_flight)
        self._stop_server()


def _running_uvicorn_server() -> uvicorn.Server | None:
    """The uvicorn server running this app, found through the SIGTERM handler it installed.

    `rbee.daemon.run_daemon` keeps its `uvicorn.Server` to itself; uvicorn installs the bound
    method `Server.handle_exit` for SIGTERM while it serves, and setting `should_exit` on that
    server is uvicorn's own way to stop gracefully (without re-raising a signal at exit).
    """
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return server if isinstance(server, uvicorn.Server) else None


def _error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(openai_error(message, type_, code), status_code=status, headers=headers)


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _or_disconnect(
    request: Request,
    awaitable: Awaitable[_T],
    discard: Callable[[_T], object] = lambda _: None,
) -> _T:
    """Await `awaitable` unless the client disconnects first: then cancel it (or `discard` what
    it produced in that same instant) and raise _ClientGone."""
    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_disconnected(request.receive))
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
    raise _ClientGone


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _parse(request: Request, model: type[_Sampling]) -> _Sampling | Response:
    try:
        body = json_object(await request.body())
    except ValueError as exc:
        return _error(400, str(exc), "invalid_request_error")
    unsupported = unsupported_field(body, model.model_fields)
    if unsupported is not None:
        return _error(400, unsupported, "invalid_request_error", "unsupported_field")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if where and not message.startswith(where):
            message = f"{where}: {message}"
        return _error(400, message, "invalid_request_error", "invalid_value")


async def _chat_completions(request: Request) -> Response:
    return await _complete(request, "chat", _ChatRequest)


async def _completions(request: Request) -> Response:
    return await _complete(request, "completion", _CompletionRequest)


async def _complete(request: Request, kind: Kind, model: type[_Sampling]) -> Response:
    worker: _Worker = request.app.state.worker
    body = await _parse(request, model)
    if isinstance(body, Response):
        return body
    refusal = worker.refusal()
    if refusal is not None:
        return refusal
    try:
        params = body.params()
    except ValueError as exc:
        return _error(400, str(exc), "invalid_request_error", "invalid_value")
    worker.request_started()
    handed_off = False
    try:
        generation = await _or_disconnect(
            request,
            worker.engine.start(
                kind,
                params,
                stream=body.stream,
                include_usage=body.stream_options is not None and body.stream_options.include_usage,
            ),
            Generation.cancel,
        )
        try:
            # The first chunk (or the whole answer) is awaited here, so a bad prompt is
            # still an HTTP error rather than an error event inside a 200 stream.
            first = await _or_disconnect(request, anext(generation))
        except BaseException:
            generation.cancel()
            raise
        if not body.stream:
            return JSONResponse(first)
        handed_off = True
        return _EventStream(generation, first, on_close=worker.request_finished)
    except _ClientGone:
        return Response(status_code=499)
    except (ValueError, TypeError, KeyError) as exc:
        return _error(400, str(exc), "invalid_request_error")
    except Exception as exc:
        log.exception("generation failed")
        return _error(500, f"generation failed: {exc}", "server_error")
    finally:
        if not handed_off:
            worker.request_finished()


class _EventStream(Response):
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
        watch = asyncio.ensure_future(_disconnected(receive))
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


async def _health(request: Request) -> Response:
    worker: _Worker = request.app.state.worker
    health = Health(service=SERVICE, version=__version__, pid=os.getpid())
    cache = dataclasses.asdict(worker.engine.stats)
    return JSONResponse(
        health.model_dump() | worker.snapshot().model_dump() | {"prompt_cache": cache}
    )


async def _renew_identity(request: Request) -> Response:
    """`PUT /v1/identity`: the renewed TLS identity the queen issued (the queen alone may
    call the worker at all)."""
    worker: _Worker = request.app.state.worker
    if worker.identity is None:
        return _error(404, "this worker serves no TLS: nothing to renew", "invalid_request_error")
    try:
        renewal = Renewal.model_validate(json_object(await request.body()))
        await asyncio.to_thread(worker.identity.replace, renewal.bundle.encode())
    except (ValueError, ValidationError) as exc:
        return _error(422, f"bundle: {exc}", "invalid_request_error", "invalid_value")
    log.info("identity renewed expires_at=%.0f", worker.identity.expires_at)
    return JSONResponse(worker.snapshot().model_dump())


async def _models(request: Request) -> Response:
    worker: _Worker = request.app.state.worker
    entry = {"id": worker.config.model, "object": "model", "created": 0, "owned_by": "rbee"}
    return JSONResponse({"object": "list", "data": [entry]})


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    worker: _Worker = app.state.worker
    worker.install_signal_handlers()
    tasks = [
        asyncio.create_task(worker.heartbeat.run(), name="heartbeat"),
        asyncio.create_task(worker.load(), name="load"),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(worker.engine.close, _CLOSE_TIMEOUT_S)


def create_app(
    config: WorkerArgs, token: str | None = None, identity: Identity | None = None
) -> Starlette:
    """The worker's ASGI app; `app.state.worker.exit_code` says how the worker should exit.
    Heartbeats go with its TLS `identity` or, without one, `token`."""
    app = Starlette(
        routes=[
            Route("/health", _health, methods=["GET"]),
            Route("/v1/models", _models, methods=["GET"]),
            Route("/v1/chat/completions", _chat_completions, methods=["POST"]),
            Route("/v1/completions", _completions, methods=["POST"]),
            Route("/v1/identity", _renew_identity, methods=["PUT"]),
        ],
        lifespan=_lifespan,
    )
    app.state.worker = _Worker(config, token, identity)
    return app
