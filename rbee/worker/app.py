"""The worker's HTTP face: /health, OpenAI-compatible completions, and its lifecycle.

Lifecycle: `loading` while the model loads in the background (inference answers 503), then
`idle` or `busy` by slot use, then `draining` after SIGTERM: new requests get 503, requests
already accepted finish, and the server stops once none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee import __version__
from rbee.pki import Identity
from rbee.wire import (
    Health,
    Heartbeat,
    Renewal,
    WorkerArgs,
    WorkerState,
    json_object,
)
from rbee.wire.prefix import prefix_of
from rbee.worker import cores
from rbee.worker.chat import ChatRequest, CompletionRequest, Sampling
from rbee.worker.embed import Embedder, model_purpose
from rbee.worker.embeddings import embeddings, rerank, wrong_purpose
from rbee.worker.engine import Engine, Generation, Kind, shares_cores
from rbee.worker.heartbeat import HeartbeatSender
from rbee.worker.http import EventStream, error, generate, parse
from rbee.worker.responses import create_response

__all__ = ["SERVICE", "create_app"]

log = logging.getLogger(__name__)

SERVICE = WorkerArgs.SCRIPT
# Accepted requests get this long to finish after SIGTERM; the hive's SIGKILL may come sooner.
_DRAIN_TIMEOUT_S = 300.0
# At exit, the decode loop gets this long to end its step before the context is freed.
_CLOSE_TIMEOUT_S = 10.0


class _Worker:
    """The worker's state: engine, heartbeat, drain, and requests in flight."""

    def __init__(self, config: WorkerArgs, token: str | None, identity: Identity | None) -> None:
        self.config = config
        self.identity = identity
        # The GGUF's header says what it is for, and so which engine serves it.
        self.purpose = model_purpose(config.model_path)
        self.engine: Engine | Embedder = (
            Engine(config, on_change=self._state_may_have_changed)
            if self.purpose == "chat"
            else Embedder(config, self.purpose, on_change=self._state_may_have_changed)
        )
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
        config, engine = self.config, self.engine
        chat = engine if isinstance(engine, Engine) else None
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
            socket=config.socket,
            threads=chat.threads if chat else None,
            prompt_cache=chat.stats if chat else None,
            prefixes=chat.prefixes if chat else [],
        )

    def _state_may_have_changed(self) -> None:
        state = self.state
        if state != self._last_state:
            # idle/busy flip on every request: only the lifecycle steps are worth INFO.
            level = logging.DEBUG if {state, self._last_state} == {"idle", "busy"} else logging.INFO
            log.log(level, "state=%s previous=%s", state, self._last_state)
            self._last_state = state
            if level == logging.INFO:
                self.heartbeat.poke()
            else:
                self.heartbeat.nudge()

    def chat_engine(self) -> Engine | Response:
        """The chat engine, or the answer to a chat request now: a 400 for a model that is
        not for chat (known from its header, loaded or not), a 503 while loading or draining."""
        if not isinstance(self.engine, Engine):
            return wrong_purpose(self.config.model, self.purpose, "chat")
        return self.refusal() or self.engine

    def refusal(self) -> Response | None:
        """A 503 while the worker cannot take requests (loading, draining), else None."""
        state = self.state
        if state == "loading":
            return error(503, "the model is still loading", "server_error", "loading")
        if state == "draining":
            return error(503, "this worker is shutting down", "server_error", "draining")
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


async def _chat_completions(request: Request) -> Response:
    return await _complete(request, "chat", ChatRequest)


async def _completions(request: Request) -> Response:
    return await _complete(request, "completion", CompletionRequest)


async def _complete(request: Request, kind: Kind, model: type[Sampling]) -> Response:
    worker: _Worker = request.app.state.worker
    body = await parse(request, model)
    if isinstance(body, Response):
        return body
    engine = worker.chat_engine()
    if isinstance(engine, Response):
        return engine
    try:
        params = body.params()
    except ValueError as exc:
        return error(400, str(exc), "invalid_request_error", "invalid_value")
    start = engine.start(
        kind,
        params,
        stream=body.stream,
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
        choices=body.n,
        prefixes=prefix_of(request.state.json).hashes,
    )

    def respond(generation: Generation, first: dict[str, Any]) -> Response:
        if not body.stream:
            return JSONResponse(first)
        return EventStream(generation, first, on_close=worker.request_finished)

    return await generate(request, worker, start, respond, stream=body.stream)


async def _health(request: Request) -> Response:
    worker: _Worker = request.app.state.worker
    health = Health(service=SERVICE, version=__version__, pid=os.getpid())
    engine = worker.engine
    # A chat worker's prompt cache is in its heartbeat; an embedding worker's counters are not.
    counters = {} if isinstance(engine, Engine) else {"embeddings": asdict(engine.stats)}
    body = health.model_dump() | worker.snapshot().model_dump() | {"purpose": worker.purpose}
    return JSONResponse(body | counters)


async def _renew_identity(request: Request) -> Response:
    """`PUT /v1/identity`: the renewed TLS identity the queen issued (the queen alone may
    call the worker at all)."""
    worker: _Worker = request.app.state.worker
    if worker.identity is None:
        return error(404, "this worker serves no TLS: nothing to renew", "invalid_request_error")
    try:
        renewal = Renewal.model_validate(json_object(await request.body()))
        await asyncio.to_thread(worker.identity.replace, renewal.bundle.encode())
    except (ValueError, ValidationError) as exc:
        return error(422, f"bundle: {exc}", "invalid_request_error", "invalid_value")
    log.info("identity renewed expires_at=%.0f", worker.identity.expires_at)
    return JSONResponse(worker.snapshot().model_dump())


async def _models(request: Request) -> Response:
    worker: _Worker = request.app.state.worker
    entry = {
        "id": worker.config.model,
        "object": "model",
        "created": 0,
        "owned_by": "rbee",
        "purpose": worker.purpose,
    }
    return JSONResponse({"object": "list", "data": [entry]})


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    worker: _Worker = app.state.worker
    worker.install_signal_handlers()
    tasks = [
        asyncio.create_task(worker.heartbeat.run(), name="heartbeat"),
        asyncio.create_task(worker.load(), name="load"),
    ]
    if isinstance(worker.engine, Engine) and shares_cores(worker.config):
        tasks.append(asyncio.create_task(_share_cores(worker.engine), name="cores"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(worker.engine.close, _CLOSE_TIMEOUT_S)


async def _share_cores(engine: Engine) -> None:
    """Follow the worker's share of the cores as CPU workers start and stop beside it."""
    while True:
        await asyncio.sleep(cores.SHARE_EVERY_S)
        try:
            await asyncio.to_thread(engine.share_cores)
        except Exception:  # a process list that failed once: the next try may work
            log.exception("reading the share of the cores failed")


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
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/rerank", rerank, methods=["POST"]),
            Route("/v1/responses", create_response, methods=["POST"]),
            Route("/v1/identity", _renew_identity, methods=["PUT"]),
        ],
        lifespan=_lifespan,
    )
    app.state.worker = _Worker(config, token, identity)
    return app
