"""The workers' routes: heartbeats (on the cluster listener), the live workers, retiring one,
and the models they serve (`/v1/models`)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.daemon import PEER
from rbee.errors import RbeeError
from rbee.pki import Peer
from rbee.queen.http.errors import Refused, parse_body
from rbee.queen.http.state import queen_of
from rbee.wire import Heartbeat

__all__ = ["get_worker", "heartbeat", "list_models", "list_workers", "retire_worker"]

log = logging.getLogger(__name__)


async def heartbeat(request: Request) -> Response:
    """A worker's heartbeat, on the cluster listener: the worker's certificate must be the one
    the queen issued for that worker of that hive (a worker speaks only for itself), and the
    worker must serve TLS (the relay never sends a prompt in clear)."""
    queen = queen_of(request)
    beat = await parse_body(request, Heartbeat)
    peer: Peer | None = request.scope.get(PEER)
    if peer is None or peer.name != f"{beat.hive}/{beat.worker_id}":
        message = f"this certificate does not belong to worker {beat.worker_id} of {beat.hive}"
        raise Refused(403, message, "permission_error", "not_this_worker")
    if not beat.url.startswith("https://"):
        raise Refused(422, "a worker must serve https", "invalid_request_error", "plain_http")
    record = queen.registry.beat(beat)
    if record is not None:
        queen.admission.pump(beat.model)  # capacity may have come: a worker done loading
        queen.renewals.worker(beat)
    return Response(status_code=204)


async def list_workers(request: Request) -> JSONResponse:
    registry = queen_of(request).registry
    return JSONResponse([registry.view(r).model_dump() for r in registry.live()])


async def get_worker(request: Request) -> JSONResponse:
    registry = queen_of(request).registry
    worker_id = request.path_params["worker_id"]
    # A retired worker shows as draining until it has stopped (`rbee worker retire --wait`).
    record = registry.get(worker_id) or registry.stopping(worker_id)
    if record is None:
        raise Refused(404, "no such live worker", "not_found_error")
    return JSONResponse(registry.view(record).model_dump())


async def retire_worker(request: Request) -> JSONResponse:
    """Drain a worker (no new request; those in flight finish), then stop it: 202."""
    queen = queen_of(request)
    worker_id = request.path_params["worker_id"]
    try:
        record = queen.autoscaler.retire(worker_id, "retired by request")
    except RbeeError as exc:
        raise Refused(409, exc.message, "conflict", "unknown_hive") from None
    if record is None:
        raise Refused(404, f"no live worker {worker_id!r}", "not_found_error")
    log.info("event=retire_requested worker=%s", worker_id)
    return JSONResponse(queen.registry.view(record).model_dump(), status_code=202)


async def list_models(request: Request) -> JSONResponse:
    models = queen_of(request).registry.models()
    # `created` is required by the OpenAI SDK's Model type; rbee does not know when a GGUF
    # was made, so 0 (as the worker says).
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "rbee"} for m in models]
    return JSONResponse({"object": "list", "data": data})
