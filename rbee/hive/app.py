"""The hive's HTTP routes (DESIGN §4): health, capabilities, models, worker binaries,
operations, workers. Module-level handlers over `request.app.state.hive` (a `HiveContext`);
`create_app` builds that context with its catalogs and returns the Starlette app."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

import rbee
from rbee.catalog import ArtifactCatalog, InvalidArtifactError
from rbee.catalog.vendors import Resolved
from rbee.errors import NotFoundError, RbeeError
from rbee.hive import capabilities
from rbee.hive.binaries import WorkerBinaryCatalog
from rbee.hive.operations import Operation, Operations
from rbee.hive.processes import find_worker, list_workers, log_path, spawn_worker, stop_worker
from rbee.hive.rpc_servers import list_rpc_servers, spawn_rpc_server, stop_rpc_server
from rbee.logsource import LogFile, log_response, own_log
from rbee.net import LOOPBACK
from rbee.paths import cache_dir
from rbee.pki import Identity
from rbee.wire import (
    AddModel,
    AddWorkerBinary,
    Health,
    HiveArgs,
    HiveState,
    OperationStarted,
    Renewal,
    RpcServerProcess,
    SpawnRequest,
    SpawnRpcServer,
    WorkerBinaryEntry,
    json_object,
    openai_error,
    sse,
)
from rbee.wire.logs import LogQuery

__all__ = ["ROUTES", "SERVICE", "HiveContext", "create_app"]

SERVICE = HiveArgs.SCRIPT
_MAX_GRACE_S = 300.0
# A partial download untouched this long belongs to a model no apply asks for any more.
_STALE_PARTIAL_S = 7 * 24 * 3600.0
_M = TypeVar("_M", bound=BaseModel)
_log = logging.getLogger(__name__)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class HiveContext:
    """Everything the hive's handlers share (`request.app.state.hive`): its name, catalogs,
    operations and credentials. Its workers listen on `worker_host`."""

    name: str
    models: ArtifactCatalog
    worker_binaries: WorkerBinaryCatalog
    token: str | None = None
    identity: Identity | None = None
    worker_host: str = LOOPBACK
    operations: Operations = field(default_factory=Operations)
    # The running add-model operation of each model, and what it was asked to add.
    adding: dict[str, tuple[AddModel, Operation]] = field(default_factory=dict)
    # Held from "is this binary in use / provisioned" to the spawn or removal that relies on it.
    binaries_in_use: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def peer_headers(self) -> dict[str, str]:
        """What a copy from a peer (another hive of this cluster) sends: this hive's token."""
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def peer_verify(self) -> ssl.SSLContext | bool:
        """How a copy from a peer is made: with this hive's identity, else the system's CAs."""
        return self.identity.client if self.identity else True

    def health(self) -> Health:
        expires = self.identity.expires_at if self.identity else None
        return Health(
            service=SERVICE,
            version=rbee.__version__,
            pid=os.getpid(),
            name=self.name,
            tls_expires_at=expires,
        )

    def listed_state(self) -> HiveState:
        # One thread for all four listings: each takes a few ms, a hop to the pool costs more.
        return HiveState(
            health=self.health(),
            models=self.models.list(),
            worker_binaries=self.worker_binaries.list(),
            workers=list_workers(self.models.root),
            capabilities=capabilities.gather(),
            rpc_servers=self.rpc_servers(),
        )

    def rpc_servers(self) -> list[RpcServerProcess]:
        """This hive's RPC server (a worker of another hive spans this one), if it runs."""
        if self.identity is None:
            return []
        return list_rpc_servers(self.name, self.identity.path)


async def _provisioned(hive: HiveContext, name: str) -> WorkerBinaryEntry:
    """The worker binary `name` of this hive; a 404 when it is not provisioned."""
    try:
        return await run_in_threadpool(hive.worker_binaries.get, name)
    except (NotFoundError, InvalidArtifactError):
        message = f"worker binary {name!r} is not provisioned on this hive"
        raise _HTTPError(404, message, "worker_binary_not_found") from None


def _hive(request: Request) -> HiveContext:
    hive: HiveContext = request.app.state.hive
    return hive


async def health(request: Request) -> Response:
    hive = _hive(request)
    return JSONResponse(hive.health().model_dump())


async def state(request: Request) -> Response:
    return _json(await run_in_threadpool(_hive(request).listed_state))


async def get_capabilities(request: Request) -> Response:
    return _json(await run_in_threadpool(capabilities.gather))


async def list_models(request: Request) -> Response:
    return _json(await run_in_threadpool(_hive(request).models.list))


async def get_model(request: Request) -> Response:
    models = _hive(request).models
    return _json(await run_in_threadpool(models.get, request.path_params["name"]))


async def add_model(request: Request) -> Response:
    hive = _hive(request)
    wanted = await _parse(request, AddModel)
    hive.models.check(wanted.name, wanted.source, wanted.sha256)
    return _started(await _add_operation(hive, wanted))


async def _add_operation(hive: HiveContext, wanted: AddModel) -> Operation:
    """The operation that brings `wanted` in: one already running, done at once, or new."""
    models = hive.models
    running = hive.adding.get(wanted.name)
    if running is not None and not running[1].finished:
        if running[0] != wanted:
            message = f"model {wanted.name} is being added from another source"
            raise _HTTPError(409, message, "conflict")
        return running[1]
    present = await run_in_threadpool(models.present, wanted.name, wanted.source, wanted.sha256)
    if present is not None:
        return hive.operations.done(present.size_bytes)

    path = f"/v1/models/{wanted.name}/payload"
    mirrors = [
        Resolved(
            url=peer.rstrip("/") + path,
            headers=hive.peer_headers,
            revision=wanted.revision,
            verify=hive.peer_verify,
        )
        for peer in wanted.peers
    ]

    def work(op: Operation) -> int:
        entry = models.add(wanted.name, wanted.source, wanted.sha256, op.progress, mirrors)
        return entry.size_bytes

    operation = hive.operations.start(work, label=f"add-model:{wanted.name}")
    hive.adding[wanted.name] = (wanted, operation)
    return operation


async def model_payload(request: Request) -> Response:
    """The model's file, for a peer hive to copy (Range requests resume a copy)."""
    models = _hive(request).models
    entry = await run_in_threadpool(models.get, request.path_params["name"])
    return FileResponse(entry.path, headers={"X-Rbee-Sha256": entry.sha256})


async def remove_model(request: Request) -> Response:
    models = _hive(request).models
    return _json(await run_in_threadpool(models.remove, request.path_params["name"]))


async def list_worker_binaries(request: Request) -> Response:
    return _json(await run_in_threadpool(_hive(request).worker_binaries.list))


async def get_worker_binary(request: Request) -> Response:
    worker_binaries = _hive(request).worker_binaries
    return _json(await run_in_threadpool(worker_binaries.get, request.path_params["name"]))


async def add_worker_binary(request: Request) -> Response:
    hive = _hive(request)
    wanted = await _parse(request, AddWorkerBinary)
    hive.worker_binaries.check(wanted.name)

    peers = [
        Resolved(url=peer, headers=hive.peer_headers, verify=hive.peer_verify)
        for peer in wanted.peers
    ]

    def work(op: Operation) -> int:
        hive.worker_binaries.provision(wanted, op.log, peers)
        return 0

    operation = hive.operations.start(work, label=f"add-worker-binary:{wanted.name}")
    return _started(operation)


async def runtime_wheel(request: Request) -> Response:
    """A built runtime's llama-cpp-python wheel, for a peer of the same platform."""
    worker_binaries = _hive(request).worker_binaries
    digest = request.path_params["digest"]
    wheel, sha256 = await run_in_threadpool(worker_binaries.wheel, digest)
    return FileResponse(wheel, filename=wheel.name, headers={"X-Rbee-Sha256": sha256})


async def remove_worker_binary(request: Request) -> Response:
    hive = _hive(request)
    name = request.path_params["name"]
    async with hive.binaries_in_use:
        await run_in_threadpool(hive.worker_binaries.get, name)
        users = [
            worker
            for worker in await run_in_threadpool(list_workers, hive.models.root)
            if worker.worker_binary == name
        ]
        if users:
            pids = ", ".join(str(worker.pid) for worker in users)
            message = f"worker binary {name!r} is in use by worker processes (pid {pids})"
            raise _HTTPError(409, message, "in_use")
        return _json(await run_in_threadpool(hive.worker_binaries.remove, name))


async def get_operation(request: Request) -> Response:
    operations = _hive(request).operations
    return _json(operations.get(request.path_params["operation_id"]).latest)


async def operation_events(request: Request) -> Response:
    operation = _hive(request).operations.get(request.path_params["operation_id"])

    async def stream() -> AsyncIterator[bytes]:
        async for event in operation.events():
            yield sse.event(event.model_dump_json())

    return StreamingResponse(stream(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)


async def renew_identity(request: Request) -> Response:
    hive = _hive(request)
    identity = hive.identity
    if identity is None:
        raise _HTTPError(404, "this hive serves no TLS: nothing to renew", "not_found")
    renewal = await _parse(request, Renewal)
    try:
        await run_in_threadpool(identity.replace, renewal.bundle.encode())
    except ValueError as exc:
        raise _HTTPError(422, f"bundle: {exc}", "validation_error") from None
    _log.info("identity renewed expires_at=%.0f", identity.expires_at)
    return _json(hive.health())


async def list_worker_processes(request: Request) -> Response:
    return _json(await run_in_threadpool(list_workers, _hive(request).models.root))


async def spawn_worker_process(request: Request) -> Response:
    hive = _hive(request)
    wanted = await _parse(request, SpawnRequest)
    if hive.token is None and wanted.tls_identity is None:
        message = "this hive serves mutual TLS: a spawn needs the worker's tls_identity"
        raise _HTTPError(422, message, "validation_error")
    try:
        model = await run_in_threadpool(hive.models.get, wanted.model)
    except (NotFoundError, InvalidArtifactError):
        message = f"model {wanted.model!r} is not in this hive's catalog"
        raise _HTTPError(404, message, "model_not_found") from None
    async with hive.binaries_in_use:
        binary = await _provisioned(hive, wanted.worker_binary)
        try:
            worker = await run_in_threadpool(
                spawn_worker,
                wanted,
                binary.python,
                Path(model.path),
                hive.token,
                hive.worker_host,
            )
        except ValueError as exc:
            raise _HTTPError(422, f"worker_id: {exc}", "validation_error") from None
    return _json(worker, status=201)


async def get_worker_process(request: Request) -> Response:
    root = _hive(request).models.root
    return _json(await run_in_threadpool(find_worker, request.path_params["pid"], root))


async def stop_worker_process(request: Request) -> Response:
    grace = _grace(request.query_params.get("grace", "5"))
    pid = request.path_params["pid"]
    return _json(await run_in_threadpool(stop_worker, pid, grace, _hive(request).models.root))


async def list_rpc_server_processes(request: Request) -> Response:
    return _json(await run_in_threadpool(_hive(request).rpc_servers))


async def spawn_rpc_server_process(request: Request) -> Response:
    """`POST /v1/rpc-servers`: lend this hive's devices to workers that span it. Only a hive
    with a TLS identity runs one: the identity is the gate's, the only way in."""
    hive = _hive(request)
    wanted = await _parse(request, SpawnRpcServer)
    if hive.identity is None:
        message = "an RPC server needs the hive's TLS identity (its gate is mutual TLS)"
        raise _HTTPError(422, message, "validation_error")
    identity = hive.identity.path
    async with hive.binaries_in_use:
        running = await run_in_threadpool(hive.rpc_servers)
        if running:
            message = f"this hive already runs an RPC server (pid {running[0].pid})"
            raise _HTTPError(409, message, "conflict")
        binary = await _provisioned(hive, wanted.worker_binary)
        server = await run_in_threadpool(
            spawn_rpc_server,
            wanted,
            binary.python,
            hive.name,
            identity,
            hive.worker_host,
            hive.models.root.parent / "rpc-cache",
        )
    return _json(server, status=201)


async def stop_rpc_server_process(request: Request) -> Response:
    hive = _hive(request)
    grace = _grace(request.query_params.get("grace", "5"))
    if hive.identity is None:
        raise _HTTPError(404, "this hive runs no RPC server", "not_found")
    pid, identity = request.path_params["pid"], hive.identity.path
    return _json(await run_in_threadpool(stop_rpc_server, pid, grace, hive.name, identity))


async def worker_log(request: Request) -> Response:
    query = _log_query(request)
    try:
        path = log_path(request.path_params["worker_id"])
    except ValueError as exc:
        raise _HTTPError(422, f"worker_id: {exc}", "validation_error") from None
    return await log_response(LogFile(path), query)


async def own_log_route(request: Request) -> Response:
    """The hive's own log: the file its output goes to, or its systemd unit's journal."""
    query = _log_query(request)
    source = own_log()
    if source is None:
        message = "this hive's output goes to a terminal or a pipe, not to a log file"
        raise _HTTPError(404, message, "no_log")
    return await log_response(source, query)


ROUTES = [
    Route("/health", health),
    Route("/v1/state", state),
    Route("/v1/capabilities", get_capabilities),
    Route("/v1/models", list_models),
    Route("/v1/models", add_model, methods=["POST"]),
    Route("/v1/models/{name}", get_model),
    Route("/v1/models/{name}/payload", model_payload),
    Route("/v1/models/{name}", remove_model, methods=["DELETE"]),
    Route("/v1/worker-binaries", list_worker_binaries),
    Route("/v1/worker-binaries", add_worker_binary, methods=["POST"]),
    Route("/v1/worker-binaries/{name}", get_worker_binary),
    Route("/v1/runtimes/{digest}/wheel", runtime_wheel),
    Route("/v1/worker-binaries/{name}", remove_worker_binary, methods=["DELETE"]),
    Route("/v1/operations/{operation_id}", get_operation),
    Route("/v1/operations/{operation_id}/events", operation_events),
    Route("/v1/worker-processes", list_worker_processes),
    Route("/v1/worker-processes", spawn_worker_process, methods=["POST"]),
    Route("/v1/worker-processes/{pid:int}", get_worker_process),
    Route("/v1/worker-processes/{pid:int}", stop_worker_process, methods=["DELETE"]),
    Route("/v1/rpc-servers", list_rpc_server_processes),
    Route("/v1/rpc-servers", spawn_rpc_server_process, methods=["POST"]),
    Route("/v1/rpc-servers/{pid:int}", stop_rpc_server_process, methods=["DELETE"]),
    Route("/v1/worker-logs/{worker_id}", worker_log),
    Route("/v1/logs", own_log_route),
    Route("/v1/identity", renew_identity, methods=["PUT"]),
]


def create_app(
    name: str,
    token: str | None = None,
    catalog: ArtifactCatalog | None = None,
    worker_host: str = LOOPBACK,
    binaries: WorkerBinaryCatalog | None = None,
    identity: Identity | None = None,
) -> Starlette:
    """The hive's ASGI app (who may call it is the server's business); its workers listen on
    `worker_host`. A hive serving mutual TLS copies from peers with its identity
    (`HiveContext.peer_verify`) and gives each worker the identity the queen sent with its
    spawn (the queen renews the hive's in place: `PUT /v1/identity`); a hive with a `token`
    hands that to its workers and peers instead."""
    models = ArtifactCatalog(cache_dir("models")) if catalog is None else catalog
    models.clean_partials(_STALE_PARTIAL_S)
    hive = HiveContext(
        name=name,
        models=models,
        worker_binaries=WorkerBinaryCatalog(cache_dir("workers")) if binaries is None else binaries,
        token=token,
        identity=identity,
        worker_host=worker_host,
    )
    app = Starlette(routes=ROUTES, exception_handlers=_HANDLERS)
    app.state.hive = hive
    return app


def _started(operation: Operation) -> JSONResponse:
    """202 with the operation to watch."""
    return JSONResponse(
        OperationStarted(operation_id=operation.id).model_dump(),
        status_code=202,
        headers={"Location": f"/v1/operations/{operation.id}"},
    )


def _json(value: BaseModel | list[Any], status: int = 200) -> JSONResponse:
    if isinstance(value, list):
        return JSONResponse([item.model_dump() for item in value], status_code=status)
    return JSONResponse(value.model_dump(), status_code=status)


async def _parse(request: Request, model: type[_M]) -> _M:
    try:
        data = json_object(await request.body())
    except ValueError as exc:
        raise _HTTPError(400, str(exc), "invalid_json") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        raise _HTTPError(422, problems, "validation_error") from None


def _log_query(request: Request) -> LogQuery:
    try:
        return LogQuery.parse(request.query_params)
    except ValueError as exc:
        raise _HTTPError(422, str(exc), "validation_error") from None


def _grace(raw: str) -> float:
    try:
        grace = float(raw)
    except ValueError:
        grace = -1.0
    if not 0.0 <= grace <= _MAX_GRACE_S:
        message = f"grace: expected seconds between 0 and {_MAX_GRACE_S:g}, got {raw!r}"
        raise _HTTPError(422, message, "validation_error")
    return grace


def _error(status: int, message: str, type_: str, code: str | None) -> JSONResponse:
    return JSONResponse(openai_error(message, type_, code), status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _HTTPError)
    return _error(exc.status, exc.message, "invalid_request_error", exc.code)


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail, "invalid_request_error", None)


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NotFoundError)
    return _error(404, exc.message, "invalid_request_error", "not_found")


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidArtifactError)
    message = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    return _error(422, message, "invalid_request_error", "validation_error")


async def _rbee_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RbeeError)
    _log.warning("request failed path=%s error=%s", request.url.path, exc)
    return _error(500, exc.message, "server_error", None)


async def _internal_error(request: Request, exc: Exception) -> Response:
    _log.error("request crashed path=%s", request.url.path, exc_info=exc)
    return _error(500, "internal error in rbee-hive (see its log)", "server_error", None)


_HANDLERS: dict[Any, Any] = {
    _HTTPError: _http_error,
    HTTPException: _starlette_error,
    NotFoundError: _not_found,
    InvalidArtifactError: _invalid,
    RbeeError: _rbee_error,
    Exception: _internal_error,
}
