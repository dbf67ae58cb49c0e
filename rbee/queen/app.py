"""queen-rbee's composition root: every object of one queen, built with its collaborators, and
the lifespan that runs their background tasks.

The request path is `serve` (registry, admission, calls, relay, jobs), the control plane
`control` (plan, apply, self-heal, autoscaling, the store) and the HTTP surface `http` (front
door, routes, status page); `QueenState` (`rbee.queen.http.state`) is what the routes share.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from starlette.applications import Starlette

from rbee.clients import HIVES
from rbee.daemon import ASGIApp, BrowserGuard, PeerAuth, own_names
from rbee.pki import Identity
from rbee.queen.control.autoscale import Autoscaler
from rbee.queen.control.control import Control
from rbee.queen.control.heal import Healer
from rbee.queen.control.hive_registry import HIVE_CHECK_INTERVAL_S, HiveRegistry, monitor_hives
from rbee.queen.control.job_table import JobTable
from rbee.queen.control.renewal import Renewals
from rbee.queen.control.store import Store
from rbee.queen.http.auth import Authenticator, Keys
from rbee.queen.http.errors import EXCEPTION_HANDLERS
from rbee.queen.http.front import MAX_BODY_BYTES, Front
from rbee.queen.http.routes import CLUSTER_ROUTES, ROUTES
from rbee.queen.http.state import QueenState
from rbee.queen.serve.admission import Admission
from rbee.queen.serve.calls import Calls
from rbee.queen.serve.jobs import Jobs
from rbee.queen.serve.metrics import Metrics
from rbee.queen.serve.registry import Registry
from rbee.queen.serve.relay import Relay
from rbee.queen.serve.worker import WorkerRecord

__all__ = ["cluster_app", "create_app"]


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

    # Some objects call each other (a lost worker wakes self-heal, whose control plane reads
    # the registry; admission asks the autoscaler for workers, which counts admission's
    # waiters). The one built first reaches the other through a function over a name bound
    # below: it runs on a heartbeat, a request or a background task, never before this returns.
    def worker_lost(record: WorkerRecord) -> None:
        worker_id = record.beat.worker_id
        calls.cut(worker_id, "the worker stopped sending heartbeats")
        healer.poke(f"worker {worker_id}: its heartbeats stopped")

    registry = Registry(on_lost=worker_lost)
    hive_registry = HiveRegistry(store.connection)
    control = Control(registry, store, hive_registry, cluster_url, public_url=queen_url)
    metrics = Metrics(
        registry, lambda: admission.depths(), hive_registry.up, sync=lambda: healer.sync
    )
    healer = Healer(control, on_action=metrics.healed)
    autoscaler = Autoscaler(control, metrics, waiting=lambda model: admission.waiting(model))
    admission = Admission(registry, serving=control.serving, scaler=autoscaler)
    calls = Calls(
        registry,
        admission,
        metrics,
        identity.client,
        on_gone=lambda worker_id, why: healer.poke(f"worker {worker_id}: {why}"),
    )
    relay = Relay(registry, admission, calls, metrics, control.is_declared)
    jobs = Jobs(
        JobTable(store.path),
        admission,
        calls,
        knows_model=lambda model: control.is_declared(model) or registry.serves(model),
    )
    keys = Keys(store.connection)
    queen = QueenState(
        store=store,
        hive_registry=hive_registry,
        registry=registry,
        admission=admission,
        control=control,
        keys=keys,
        auth=Authenticator(keys, token),
        metrics=metrics,
        calls=calls,
        relay=relay,
        healer=healer,
        autoscaler=autoscaler,
        jobs=jobs,
        token=token,
        hive_check_interval_s=hive_check_interval_s,
        renewals=Renewals(identity, identity_hosts),
    )
    app = Starlette(routes=ROUTES, lifespan=_lifespan, exception_handlers=EXCEPTION_HANDLERS)
    app.state.queen = queen
    return Front(
        app,
        queen,
        max_body_bytes=max_body_bytes,
        host_names=own_names(urlsplit(queen_url).hostname),
    )


def cluster_app(queen: QueenState) -> ASGIApp:
    """The queen's cluster listener (mutual TLS): where workers heartbeat. Nothing else is
    served there, and only to a worker's certificate; what only a browser sends is refused
    first, as on every listener."""
    app = Starlette(routes=CLUSTER_ROUTES, exception_handlers=EXCEPTION_HANDLERS)
    app.state.queen = queen
    guarded = PeerAuth(app, lambda role, method, path: role == "worker")
    return BrowserGuard(guarded, own_names(urlsplit(queen.control.queen_url).hostname))


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
        asyncio.create_task(queen.registry.watch()),
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
        await queen.calls.close()
        await HIVES.close()
        await queen.control.ssh.close()
        queen.store.close()
