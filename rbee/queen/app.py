"""queen-rbee's HTTP routes (DESIGN §4): module-level handlers over `app.state.queen`.

Logic lives in control (plan/apply), registry and admission (workers and their slots), relay
(the inference hot path, reached from `front` without Starlette) and keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import rbee
from rbee.apply.lock import LockNotFound
from rbee.clients import HiveClient
from rbee.config.models import Cluster, Hive, check_references
from rbee.daemon import PEER, ASGIApp, BrowserGuard, PeerAuth, own_names
from rbee.errors import RbeeError
from rbee.observe.ssh import probe
from rbee.pki import Identity, Peer
from rbee.plan.digest import redacted_plan
from rbee.plan.model import PLAN_FORMAT_VERSION, Plan
from rbee.queen.admission import Admission
from rbee.queen.autoscale import Autoscaler
from rbee.queen.control import ApplyLocked, Control, PlanOptions
from rbee.queen.front import MAX_BODY_BYTES, PRINCIPAL, Front
from rbee.queen.heal import Healer
from rbee.queen.hive_registry import HIVE_CHECK_INTERVAL_S, HiveRegistry, monitor_hives
from rbee.queen.job_routes import JOB_ROUTES
from rbee.queen.jobs import Jobs
from rbee.queen.keys import Keys
from rbee.queen.logs import hive_log, queen_log, worker_log
from rbee.queen.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from rbee.queen.metrics import Metrics
from rbee.queen.registry import Registry
from rbee.queen.relay import Relay
from rbee.queen.renewal import Renewals
from rbee.queen.store import Store
from rbee.queen.ui import events, login, login_form, logout, page
from rbee.remote.ssh_config import hives_from_ssh_config
from rbee.wire import (
    ApplyEvent,
    ApplyRequest,
    CreatedKey,
    CreateKey,
    DownRequest,
    ErrorEvent,
    ForceUnlock,
    Health,
    Heartbeat,
    PlanRequest,
    QueenArgs,
    SummaryEvent,
    json_object,
    openai_error,
    sse,
)

__all__ = ["QueenState", "create_app", "parse_body"]

log = logging.getLogger(__name__)
_Body = TypeVar("_Body", bound=BaseModel)


class _Refused(Exception):
    """A request the queen refuses; the exception handler turns it into its JSON response."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None) -> None:
        super().__init__(message)
        self.response = JSONResponse(openai_error(message, type_, code), status_code=status)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Refused)
    return exc.response


async def _json_body(request: Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its JSON object; malformed JSON is a 400."""
    raw = await request.body()
    try:
        return raw, json_object(raw)
    except ValueError as exc:
        raise _Refused(400, str(exc), "invalid_request_error") from None


async def parse_body(request: Request, model: type[_Body]) -> _Body:
    """The request's JSON body as `model`; malformed JSON is a 400, a wrong shape a 422 that
    names the field."""
    _, body = await _json_body(request)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise _Refused(422, f"{where}: {first['msg']}", "invalid_request_error") from None


def _cluster(data: dict[str, Any] | None) -> Cluster:
    """A request's `cluster`, validated as the keeper validated it."""
    try:
        cluster = Cluster.model_validate(data)
    except ValidationError as exc:
        message = f"invalid cluster: {exc.errors()[0]['msg']}"
        raise _Refused(422, message, "invalid_request_error") from None
    problems = check_references(cluster)
    if problems:
        raise _Refused(422, f"invalid cluster: {problems[0][1]}", "invalid_request_error")
    return cluster


def _options(body: PlanRequest | ApplyRequest) -> PlanOptions:
    return PlanOptions(targets=body.targets, refresh_only=body.refresh_only, prune=body.prune)


def _saved_plan(body: ApplyRequest) -> Plan | None:
    """A saved plan sent to apply, checked for a format this queen understands."""
    if body.plan is None:
        return None
    try:
        saved = Plan.model_validate(body.plan)
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


@dataclass
class QueenState:
    """Everything the queen's handlers share (`request.app.state.queen`)."""

    store: Store
    hive_registry: HiveRegistry
    registry: Registry
    admission: Admission
    control: Control
    keys: Keys
    metrics: Metrics
    relay: Relay
    healer: Healer
    autoscaler: Autoscaler
    jobs: Jobs
    token: str
    hive_check_interval_s: float
    renewals: Renewals
    background: set[asyncio.Task[None]] = field(default_factory=set)


def _queen(request: Request) -> QueenState:
    state: QueenState = request.app.state.queen
    return state


async def health(request: Request) -> JSONResponse:
    return JSONResponse(
        Health(service=QueenArgs.SCRIPT, version=rbee.__version__, pid=os.getpid()).model_dump()
    )


async def metrics(request: Request) -> Response:
    return Response(_queen(request).metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


async def heartbeat(request: Request) -> Response:
    """A worker's heartbeat, on the cluster listener: the worker's certificate must be the one
    the queen issued for that worker of that hive (a worker speaks only for itself), and the
    worker must serve TLS (the relay never sends a prompt in clear)."""
    queen = _queen(request)
    beat = await parse_body(request, Heartbeat)
    peer: Peer | None = request.scope.get(PEER)
    if peer is None or peer.name != f"{beat.hive}/{beat.worker_id}":
        message = f"this certificate does not belong to worker {beat.worker_id} of {beat.hive}"
        raise _Refused(403, message, "permission_error", "not_this_worker")
    if not beat.url.startswith("https://"):
        raise _Refused(422, "a worker must serve https", "invalid_request_error", "plain_http")
    record = queen.registry.beat(beat)
    if record is not None:
        queen.admission.pump(beat.model)  # capacity may have come: a worker done loading
        queen.renewals.worker(beat)
    return Response(status_code=204)


async def list_workers(request: Request) -> JSONResponse:
    registry = _queen(request).registry
    return JSONResponse([registry.view(r).model_dump() for r in registry.live()])


async def get_worker(request: Request) -> JSONResponse:
    registry = _queen(request).registry
    worker_id = request.path_params["worker_id"]
    # A retired worker shows as draining until it has stopped (`rbee worker retire --wait`).
    record = registry.get(worker_id) or registry.stopping(worker_id)
    if record is None:
        raise _Refused(404, "no such live worker", "not_found_error")
    return JSONResponse(registry.view(record).model_dump())


async def retire_worker(request: Request) -> JSONResponse:
    """Drain a worker (no new request; those in flight finish), then stop it: 202."""
    queen = _queen(request)
    worker_id = request.path_params["worker_id"]
    try:
        record = queen.autoscaler.retire(worker_id, "retired by request")
    except RbeeError as exc:
        raise _Refused(409, exc.message, "conflict", "unknown_hive") from None
    if record is None:
        raise _Refused(404, f"no live worker {worker_id!r}", "not_found_error")
    log.info("event=retire_requested worker=%s", worker_id)
    return JSONResponse(queen.registry.view(record).model_dump(), status_code=202)


async def list_models(request: Request) -> JSONResponse:
    models = _queen(request).registry.models()
    data = [{"id": m, "object": "model", "owned_by": "rbee"} for m in models]
    return JSONResponse({"object": "list", "data": data})


async def plan_route(request: Request) -> JSONResponse:
    """A plan; to a plan key (CI on a pull request, which never applies) with every secret
    hidden, those its actions keep for apply included."""
    queen = _queen(request)
    body = await parse_body(request, PlanRequest)
    cluster = _cluster(body.cluster)
    the_plan = await queen.control.plan(cluster, _options(body))
    if request.scope[PRINCIPAL].scope == "plan":
        return JSONResponse(redacted_plan(the_plan, (queen.token, cluster.queen.token)))
    return JSONResponse(the_plan.model_dump(mode="json"))


async def apply_route(request: Request) -> Response:
    queen = _queen(request)
    control = queen.control
    body = await parse_body(request, ApplyRequest)
    saved = _saved_plan(body)
    cluster = _cluster(saved.cluster if saved else body.cluster)
    options = _options(body)
    holder = request.headers.get("x-rbee-holder", request.client.host if request.client else "?")
    parallelism = body.parallelism
    try:
        lock = await control.lock.acquire(holder, body.lock_timeout_s)
    except ApplyLocked as exc:
        raise _Refused(409, exc.message, "conflict", "apply_locked") from None
    if await request.is_disconnected():  # the keeper gave up while waiting for the lock
        control.lock.release(lock.id)
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


async def list_hives(request: Request) -> JSONResponse:
    records = _queen(request).hive_registry.records()
    return JSONResponse([r.model_dump(mode="json") for r in records])


async def get_hive(request: Request) -> JSONResponse:
    queen = _queen(request)
    name = request.path_params["name"]
    hive = _registered(queen, name)
    record = (
        await queen.hive_registry.check(hive)
        if request.query_params.get("refresh")
        else queen.hive_registry.get(name)
    )
    assert record is not None
    return JSONResponse(record.model_dump(mode="json"))


def _registered(queen: QueenState, name: str) -> Hive:
    hive = next((h for h in queen.hive_registry.hives() if h.name == name), None)
    if hive is None:
        raise _Refused(404, f"no hive named {name!r} is registered", "not_found_error")
    return hive


async def refresh_capabilities(request: Request) -> JSONResponse:
    queen = _queen(request)
    hive = _registered(queen, request.path_params["name"])
    async with HiveClient(hive.url, hive.name, timeout=15.0) as client:
        try:
            capabilities = await client.capabilities()
        except RbeeError as exc:
            raise _Refused(502, exc.message, "bad_gateway", "hive_unreachable") from None
    queen.hive_registry.set_capabilities(hive.name, capabilities)
    record = queen.hive_registry.get(hive.name)
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
    queen = _queen(request)
    body = (await queen.control.status()).model_copy(update={"sync": queen.healer.sync})
    return JSONResponse(body.model_dump(mode="json"))


async def down(request: Request) -> JSONResponse:
    body = await parse_body(request, DownRequest)
    cluster = _cluster(body.cluster) if body.cluster is not None else None
    try:
        return JSONResponse((await _queen(request).control.down(cluster)).model_dump(mode="json"))
    except ApplyLocked as exc:
        raise _Refused(409, exc.message, "conflict", "apply_locked") from None


async def shutdown(request: Request) -> JSONResponse:
    return JSONResponse(
        {"stopping": os.getpid()},
        background=BackgroundTask(os.kill, os.getpid(), signal.SIGTERM),
    )


async def get_lock(request: Request) -> JSONResponse:
    lock = _queen(request).control.lock.current()
    return JSONResponse({"lock": lock.to_json() if lock else None})


async def force_unlock(request: Request) -> JSONResponse:
    body = await parse_body(request, ForceUnlock)
    try:
        unlocked = _queen(request).control.lock.force_unlock(body.id)
    except LockNotFound as exc:
        raise _Refused(404, exc.message, "not_found_error", "lock_not_found") from None
    return JSONResponse({"unlocked": unlocked.to_json()})


async def history(request: Request) -> JSONResponse:
    applies = _queen(request).store.history(_limit(request))
    return JSONResponse({"applies": [a.model_dump(mode="json") for a in applies]})


async def list_keys(request: Request) -> JSONResponse:
    return JSONResponse([k.model_dump() for k in _queen(request).keys.list()])


async def create_key(request: Request) -> JSONResponse:
    asked = await parse_body(request, CreateKey)
    try:
        key, secret = _queen(request).keys.create(asked.name, asked.scope, asked.rpm, asked.tpm)
    except RbeeError as exc:
        raise _Refused(409, exc.message, "conflict", "key_exists") from None
    log.info("event=key_created name=%s scope=%s", key.name, key.scope)
    return JSONResponse(CreatedKey(**key.model_dump(), key=secret).model_dump(), status_code=201)


async def revoke_key(request: Request) -> JSONResponse:
    try:
        key = _queen(request).keys.revoke(request.path_params["name"])
    except RbeeError as exc:
        raise _Refused(404, exc.message, "not_found_error", "no_such_key") from None
    log.info("event=key_revoked name=%s", key.name)
    return JSONResponse(key.model_dump())


ROUTES = [
    Route("/health", health),
    Route("/metrics", metrics),
    Route("/v1/workers", list_workers),
    Route("/v1/workers/{worker_id}", get_worker),
    Route("/v1/workers/{worker_id}/retire", retire_worker, methods=["POST"]),
    Route("/v1/models", list_models),
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
    Route("/v1/keys", list_keys),
    Route("/v1/keys", create_key, methods=["POST"]),
    Route("/v1/keys/{name}", revoke_key, methods=["DELETE"]),
    *JOB_ROUTES,
    Route("/v1/logs/queen", queen_log),
    Route("/v1/logs/hives/{name}", hive_log),
    Route("/v1/logs/workers/{worker_id}", worker_log),
    Route("/", page),
    Route("/ui/events", events),
    Route("/ui/login", login_form),
    Route("/ui/login", login, methods=["POST"]),
    Route("/ui/logout", logout, methods=["POST"]),
]


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    queen: QueenState = app.state.queen
    await queen.jobs.start()  # the jobs a previous queen left go on
    tasks = [
        asyncio.create_task(queen.jobs.prune_forever()),
        asyncio.create_task(
            monitor_hives(
                queen.hive_registry,
                queen.hive_check_interval_s,
                on_offline=lambda name: queen.healer.poke(f"hive {name} stopped answering"),
            )
        ),
        asyncio.create_task(queen.relay.access.run()),
        asyncio.create_task(queen.relay.watch_heartbeats()),
        asyncio.create_task(queen.healer.run()),
        asyncio.create_task(queen.autoscaler.run()),
        asyncio.create_task(queen.renewals.run()),
    ]
    # What the queen made at start lives as long as it does: out of the collector's way, so
    # its full collections stay short under load.
    gc.freeze()
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await queen.jobs.close()
        await queen.relay.close()
        await queen.control.ssh.close()
        queen.store.close()


def create_app(
    store: Store,
    queen_url: str,
    token: str,
    *,
    cluster_url: str,
    identity: Identity,
    identity_hosts: list[str],
    max_body_bytes: int = MAX_BODY_BYTES,
    hive_check_interval_s: float = HIVE_CHECK_INTERVAL_S,
) -> Front:
    """The queen's ASGI app: its front door at `queen_url`, opened by API keys and the cluster
    `token`. Hives and workers reach the queen at `cluster_url` (`cluster_app`); it calls them
    with its TLS `identity` (issued for `identity_hosts`, and renewed for them)."""
    registry = Registry()
    admission = Admission(registry)
    hive_registry = HiveRegistry(store.connection)
    control = Control(registry, store, hive_registry, cluster_url, admission, public_url=queen_url)
    keys = Keys(store.connection)
    metrics_ = Metrics(registry, admission, hive_registry.up)
    healer = Healer(control, on_action=metrics_.healed)
    metrics_.watch_sync(lambda: healer.sync)
    relay = Relay(registry, admission, metrics_, control.is_declared, identity.client)
    relay.on_worker_gone = lambda worker_id, why: healer.poke(f"worker {worker_id}: {why}")
    autoscaler = Autoscaler(control, admission, metrics_)
    admission.scaler = autoscaler
    jobs = Jobs(
        store.path,
        admission,
        relay,
        knows_model=lambda model: control.is_declared(model) or registry.serves(model),
    )
    queen = QueenState(
        store=store,
        hive_registry=hive_registry,
        registry=registry,
        admission=admission,
        control=control,
        keys=keys,
        metrics=metrics_,
        relay=relay,
        healer=healer,
        autoscaler=autoscaler,
        jobs=jobs,
        token=token,
        hive_check_interval_s=hive_check_interval_s,
        renewals=Renewals(identity, identity_hosts),
    )
    app = Starlette(routes=ROUTES, lifespan=_lifespan, exception_handlers={_Refused: _refused})
    app.state.queen = queen
    front = Front(
        app,
        queen,
        max_body_bytes=max_body_bytes,
        host_names=own_names(urlsplit(queen_url).hostname),
    )
    app.state.front = front  # the status page's login checks keys as the front door does
    return front


def _limit(request: Request, default: int = 20) -> int:
    """The `limit` query parameter: a count from 1 to 1000."""
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise _Refused(422, "limit must be a whole number from 1 to 1000", "invalid_request_error")
    return int(raw)


def cluster_app(queen: QueenState) -> ASGIApp:
    """The queen's cluster listener (mutual TLS): where workers heartbeat. Nothing else is
    served there, and only to a worker's certificate; what only a browser sends is refused
    first, as on every listener."""
    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/workers/heartbeat", heartbeat, methods=["POST"]),
        ],
        exception_handlers={_Refused: _refused},
    )
    app.state.queen = queen
    guarded = PeerAuth(app, lambda role, method, path: role == "worker")
    return BrowserGuard(guarded, own_names(urlsplit(queen.control.queen_url).hostname))
