"""The queen's URL table, in one place, and its routes about itself (health, metrics, stop).

`ROUTES` is the front door's (behind `front`, which says who may call what); `CLUSTER_ROUTES`
the cluster listener's (mutual TLS: only workers, to heartbeat). The handlers live by topic:
`workers`, `apply`, `hives`, `keys`, `jobs`, `logs` and the status page (`ui`).
"""

from __future__ import annotations

import os
import signal

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import rbee
from rbee.queen.http import apply, hives, jobs, keys, logs, ui, workers
from rbee.queen.http.state import queen_of
from rbee.queen.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from rbee.wire import Health, QueenArgs

__all__ = ["CLUSTER_ROUTES", "ROUTES", "health", "metrics", "shutdown"]


async def health(request: Request) -> JSONResponse:
    return JSONResponse(
        Health(service=QueenArgs.SCRIPT, version=rbee.__version__, pid=os.getpid()).model_dump()
    )


async def metrics(request: Request) -> Response:
    return Response(queen_of(request).metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


async def shutdown(request: Request) -> JSONResponse:
    return JSONResponse(
        {"stopping": os.getpid()},
        background=BackgroundTask(os.kill, os.getpid(), signal.SIGTERM),
    )


ROUTES = [
    Route("/health", health),
    Route("/metrics", metrics),
    Route("/v1/workers", workers.list_workers),
    Route("/v1/workers/{worker_id}", workers.get_worker),
    Route("/v1/workers/{worker_id}/retire", workers.retire_worker, methods=["POST"]),
    Route("/v1/models", workers.list_models),
    Route("/v1/plan", apply.plan_route, methods=["POST"]),
    Route("/v1/apply", apply.apply_route, methods=["POST"]),
    Route("/v1/hives", hives.list_hives),
    Route("/v1/hives/import-ssh", hives.import_ssh, methods=["POST"]),
    Route("/v1/hives/{name}", hives.get_hive),
    Route("/v1/hives/{name}/refresh-capabilities", hives.refresh_capabilities, methods=["POST"]),
    Route("/v1/ssh-test", hives.ssh_test, methods=["POST"]),
    Route("/v1/status", apply.status),
    Route("/v1/down", apply.down, methods=["POST"]),
    Route("/v1/shutdown", shutdown, methods=["POST"]),
    Route("/v1/lock", apply.get_lock),
    Route("/v1/lock/force-unlock", apply.force_unlock, methods=["POST"]),
    Route("/v1/history", apply.history),
    Route("/v1/keys", keys.list_keys),
    Route("/v1/keys", keys.create_key, methods=["POST"]),
    Route("/v1/keys/{name}", keys.revoke_key, methods=["DELETE"]),
    Route("/v1/jobs", jobs.submit_job, methods=["POST"]),
    Route("/v1/jobs", jobs.list_jobs),
    Route("/v1/jobs/{job_id}", jobs.get_job),
    Route("/v1/jobs/{job_id}", jobs.cancel_job, methods=["DELETE"]),
    Route("/v1/jobs/{job_id}/events", jobs.job_events),
    Route("/v1/logs/queen", logs.queen_log),
    Route("/v1/logs/hives/{name}", logs.hive_log),
    Route("/v1/logs/workers/{worker_id}", logs.worker_log),
    Route("/", ui.page),
    Route("/ui/events", ui.events),
    Route("/ui/login", ui.login_form),
    Route("/ui/login", ui.login, methods=["POST"]),
    Route("/ui/logout", ui.logout, methods=["POST"]),
]

CLUSTER_ROUTES = [
    Route("/health", health),
    Route("/v1/workers/heartbeat", workers.heartbeat, methods=["POST"]),
]
