"""queen-rbee's HTTP routes (DESIGN §4). Logic lives in registry, relay and control."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import rbee
from rbee.apply.lock import LockNotFound
from rbee.clients import HiveClient
from rbee.config.models import Cluster, Hive, check_references
from rbee.errors import RbeeError
from rbee.observe.ssh import probe
from rbee.plan.model import PLAN_FORMAT_VERSION, Plan
from rbee.queen.control import ApplyLocked, Control, PlanOptions
from rbee.queen.hive_registry import HIVE_CHECK_INTERVAL_S, HiveRegistry, monitor_hives
from rbee.queen.registry import Registry
from rbee.queen.relay import Relay
from rbee.queen.store import Store
from rbee.remote.ssh_config import hives_from_ssh_config
from rbee.wire import Health, Heartbeat, QueenArgs, openai_error, sse

__all__ = ["create_app"]


def _error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(openai_error(message, type_, code), status_code=status)


class _Refused(Exception):
    """A request the queen refuses; the exception handler turns it into its JSON response."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None) -> None:
        super().__init__(message)
        self.response = _error(status, message, type_, code)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Refused)
    return exc.response


async def _json_body(request: Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its JSON object; malformed JSON is a 400."""
    raw = await request.body()
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise _Refused(400, f"malformed JSON body: {exc}", "invalid_request_error") from None
    if not isinstance(parsed, dict):
        raise _Refused(400, "the JSON body must be an object", "invalid_request_error")
    return raw, parsed


def _cluster(body: dict[str, Any]) -> Cluster:
    """The `cluster` of a request body, validated as the keeper validated it."""
    try:
        cluster = Cluster.model_validate(body.get("cluster"))
    except ValidationError as exc:
        message = f"invalid cluster: {exc.errors()[0]['msg']}"
        raise _Refused(422, message, "invalid_request_error") from None
    problems = check_references(cluster)
    if problems:
        raise _Refused(422, f"invalid cluster: {problems[0][1]}", "invalid_request_error")
    return cluster


def _options(body: dict[str, Any]) -> PlanOptions:
    targets = body.get("targets") or []
    prune = body.get("prune")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise _Refused(422, "targets must be a list of addresses", "invalid_request_error")
    if prune is not None and not isinstance(prune, bool):
        raise _Refused(422, "prune must be true, false or null", "invalid_request_error")
    return PlanOptions(
        targets=targets, refresh_only=bool(body.get("refresh_only", False)), prune=prune
    )


def _saved_plan(body: dict[str, Any]) -> Plan | None:
    """A saved plan sent to apply, checked for a format this queen understands."""
    if body.get("plan") is None:
        return None
    try:
        saved = Plan.model_validate(body["plan"])
    except ValidationError as exc:
        raise _Refused(
            422, f"invalid saved plan: {exc.errors()[0]['msg']}", "invalid_request_error"
        ) from None
    if saved.format_version != PLAN_FORMAT_VERSION:
        message = (
            f"saved plan has format_version {saved.format_version}; "
            f"this queen reads {PLAN_FORMAT_VERSION}"
        )
        raise _Refused(422, message, "invalid_request_error")
    if saved.refresh_only:
        raise _Refused(422, "a refresh-only plan has no actions to apply", "invalid_request_error")
    return saved


def create_app(
    store: Store,
    hive_registry: HiveRegistry,
    queen_url: str,
    token: str | None,
    hive_check_interval_s: float = HIVE_CHECK_INTERVAL_S,
) -> Starlette:
    """The queen's ASGI app; `queen_url` is the URL workers and hives reach it at."""
    registry = Registry()
    control = Control(registry, store, hive_registry, queen_url, token)
    relay = Relay(registry, control.is_declared, token)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            Health(service=QueenArgs.SCRIPT, version=rbee.__version__, pid=os.getpid()).model_dump()
        )

    async def heartbeat(request: Request) -> Response:
        _, body = await _json_body(request)
        try:
            registry.beat(Heartbeat.model_validate(body))
        except ValidationError as exc:
            return _error(
                422, f"invalid heartbeat: {exc.errors()[0]['msg']}", "invalid_request_error"
            )
        return Response(status_code=204)

    async def list_workers(request: Request) -> JSONResponse:
        return JSONResponse([registry.view(r).model_dump() for r in registry.live()])

    async def get_worker(request: Request) -> JSONResponse:
        record = registry.get(request.path_params["worker_id"])
        if record is None:
            return _error(404, "no such live worker", "not_found_error")
        return JSONResponse(registry.view(record).model_dump())

    async def list_models(request: Request) -> JSONResponse:
        data = [{"id": m, "object": "model", "owned_by": "rbee"} for m in registry.models()]
        return JSONResponse({"object": "list", "data": data})

    async def inference(request: Request) -> Response:
        raw, body = await _json_body(request)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "the request names no model", "invalid_request_error")
        return await relay.forward(request.url.path, model, raw)

    async def plan_route(request: Request) -> JSONResponse:
        _, body = await _json_body(request)
        the_plan = await control.plan(_cluster(body), _options(body))
        return JSONResponse(the_plan.model_dump(mode="json"))

    async def apply_route(request: Request) -> Response:
        _, body = await _json_body(request)
        saved = _saved_plan(body)
        cluster = _cluster({"cluster": saved.cluster} if saved else body)
        options = _options(body)
        holder = request.headers.get(
            "x-rbee-holder", request.client.host if request.client else "?"
        )
        parallelism = int(body.get("parallelism", 10))
        try:
            lock = await control.lock.acquire(holder, _lock_timeout(body))
        except ApplyLocked as exc:
            return _error(409, exc.message, "conflict", "apply_locked")
        if await request.is_disconnected():  # the keeper gave up while waiting for the lock
            control.lock.release(lock.id)
            return Response(status_code=499)
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def run() -> None:
            try:
                outcome = await control.apply(
                    cluster, holder, events.put, parallelism, options, saved, lock=lock
                )
                await events.put(
                    {
                        "event": "summary",
                        "ok": outcome.ok,
                        "done": outcome.done,
                        "failed": outcome.failed,
                        "skipped": outcome.skipped,
                    }
                )
            except RbeeError as exc:
                await events.put({"event": "error", "error": exc.message, "hint": exc.hint})
            finally:
                await events.put(None)

        # The apply runs on even if the keeper disconnects; the stream only reports it.
        task = asyncio.create_task(run())
        background.add(task)
        task.add_done_callback(background.discard)

        async def stream() -> AsyncIterator[bytes]:
            while (event := await events.get()) is not None:
                yield sse.json_event(event)

        return StreamingResponse(stream(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)

    async def list_hives(request: Request) -> JSONResponse:
        return JSONResponse([r.model_dump(mode="json") for r in hive_registry.records()])

    async def get_hive(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        hive = _registered(name)
        record = (
            await hive_registry.check(hive, token)
            if request.query_params.get("refresh")
            else hive_registry.get(name)
        )
        assert record is not None
        return JSONResponse(record.model_dump(mode="json"))

    def _registered(name: str) -> Hive:
        hive = next((h for h in hive_registry.hives() if h.name == name), None)
        if hive is None:
            raise _Refused(404, f"no hive named {name!r} is registered", "not_found_error")
        return hive

    async def refresh_capabilities(request: Request) -> JSONResponse:
        hive = _registered(request.path_params["name"])
        async with HiveClient(hive.url, token, timeout=15.0) as client:
            try:
                capabilities = await client.capabilities()
            except RbeeError as exc:
                raise _Refused(502, exc.message, "bad_gateway", "hive_unreachable") from None
        hive_registry.set_capabilities(hive.name, capabilities)
        record = hive_registry.get(hive.name)
        assert record is not None
        return JSONResponse(record.model_dump(mode="json"))

    async def ssh_test(request: Request) -> JSONResponse:
        _, body = await _json_body(request)
        try:
            hive = Hive.model_validate(body.get("hive"))
        except ValidationError as exc:
            message = f"invalid hive: {exc.errors()[0]['msg']}"
            raise _Refused(422, message, "invalid_request_error") from None
        if hive.effective_mode != "network":
            raise _Refused(422, f"hive {hive.name} is local: no SSH", "invalid_request_error")
        return JSONResponse((await probe(hive)).model_dump(mode="json"))

    async def import_ssh(request: Request) -> JSONResponse:
        # Only the queen's own ~/.ssh/config: the queen is who connects, with its keys.
        path = Path.home() / ".ssh" / "config"
        try:
            text = path.read_text()
        except OSError as exc:
            raise _Refused(404, f"cannot read {path}: {exc.strerror}", "not_found_error") from None
        return JSONResponse({"path": str(path), "hives": hives_from_ssh_config(text)})

    async def status(request: Request) -> JSONResponse:
        return JSONResponse(await control.status())

    async def down(request: Request) -> JSONResponse:
        _, body = await _json_body(request)
        cluster = _cluster(body) if body.get("cluster") is not None else None
        try:
            return JSONResponse(await control.down(cluster))
        except ApplyLocked as exc:
            return _error(409, exc.message, "conflict", "apply_locked")

    async def shutdown(request: Request) -> JSONResponse:
        return JSONResponse(
            {"stopping": os.getpid()},
            background=BackgroundTask(os.kill, os.getpid(), signal.SIGTERM),
        )

    async def get_lock(request: Request) -> JSONResponse:
        lock = control.lock.current()
        return JSONResponse({"lock": lock.to_json() if lock else None})

    async def force_unlock(request: Request) -> JSONResponse:
        _, body = await _json_body(request)
        lock_id = body.get("id")
        if not isinstance(lock_id, str) or not lock_id:
            return _error(422, "force-unlock needs the lock's `id`", "invalid_request_error")
        try:
            unlocked = control.lock.force_unlock(lock_id)
        except LockNotFound as exc:
            return _error(404, exc.message, "not_found_error", "lock_not_found")
        return JSONResponse({"unlocked": unlocked.to_json()})

    async def history(request: Request) -> JSONResponse:
        return JSONResponse({"applies": store.history(_limit(request))})

    background: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await relay.start()
        monitor = asyncio.create_task(monitor_hives(hive_registry, token, hive_check_interval_s))
        try:
            yield
        finally:
            monitor.cancel()
            hive_registry.close()
            await relay.close()
            store.close()

    routes = [
        Route("/health", health),
        Route("/v1/workers/heartbeat", heartbeat, methods=["POST"]),
        Route("/v1/workers", list_workers),
        Route("/v1/workers/{worker_id}", get_worker),
        Route("/v1/models", list_models),
        Route("/v1/chat/completions", inference, methods=["POST"]),
        Route("/v1/completions", inference, methods=["POST"]),
        Route("/v1/plan", plan_route, methods=["POST"]),
        Route("/v1/apply", apply_route, methods=["POST"]),
        Route("/v1/hives", list_hives),
        Route("/v1/hives/import-ssh", import_ssh, methods=["POST"]),
        Route("/v1/hives/{name}", get_hive),
        Route("/v1/hives/{name}/refresh-capabilities", refresh_capabilities, methods=["POST"]),
        Route("/v1/ssh-test", ssh_test, methods=["POST"]),
        Route("/v1/status", status),
        Route("/v1/down", down, methods=["POST"]),
        Route("/v1/shutdown", shutdown, methods=["POST"]),
        Route("/v1/lock", get_lock),
        Route("/v1/lock/force-unlock", force_unlock, methods=["POST"]),
        Route("/v1/history", history),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={_Refused: _refused})


def _lock_timeout(body: dict[str, Any]) -> float:
    """How long an apply waits for the lock: `lock_timeout_s`, 0 (fail at once) by default."""
    value = body.get("lock_timeout_s") or 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _Refused(422, "lock_timeout_s must be a number ≥ 0", "invalid_request_error")
    return float(value)


def _limit(request: Request, default: int = 20) -> int:
    """The `limit` query parameter: a count from 1 to 1000."""
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise _Refused(422, "limit must be a whole number from 1 to 1000", "invalid_request_error")
    return int(raw)
