"""What each kind of action does, over HTTP to hives (and a callback to start hives)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from rbee.apply.executor import Emit
from rbee.clients import HiveClient, HiveTimeout
from rbee.errors import RbeeError
from rbee.wire import AddModel, OperationEvent, ProgressEvent, SpawnedEvent
from rbee.wire.plan import Action

__all__ = ["ClusterEffects"]

WorkerState = Callable[[str], str | None]
HiveStarter = Callable[[Action], Awaitable[None]]
WorkerForget = Callable[[str], None]


class ClusterEffects:
    """Carries out plan actions: hives start, models are added, workers spawn and stop."""

    def __init__(
        self,
        *,
        start_hive: HiveStarter,
        stop_hive: HiveStarter,
        worker_state: WorkerState,
        forget_worker: WorkerForget,
        ready_timeout_s: float = 180.0,
    ) -> None:
        self._start_hive = start_hive
        self._stop_hive = stop_hive
        self._worker_state = worker_state
        self._forget_worker = forget_worker
        self._ready_timeout_s = ready_timeout_s

    async def run(self, action: Action, emit: Emit) -> None:
        if action.kind == "hive":
            if action.op == "delete":
                await self._stop_hive(action)
            else:
                await self._start_hive(action)
        elif action.kind == "worker_binary":
            await self._worker_binary(action, emit)
        elif action.kind == "rpc_server":
            await self._rpc_server(action)
        elif action.kind == "model":
            if action.op == "delete":
                async with self._hive(action) as hive:
                    await hive.delete_model(action.model or "")
            else:
                await self._add_model(action, emit)
        elif action.op == "delete":
            await self._stop_worker(action)
        else:
            if action.op == "replace":
                await self._stop_worker(action)
            await self._spawn_worker(action, emit)

    def _hive(self, action: Action) -> HiveClient:
        assert action.hive_url is not None
        return HiveClient(action.hive_url, action.hive, timeout=HiveTimeout.ACTION)

    async def _add_model(self, action: Action, emit: Emit) -> None:
        assert action.model is not None and action.source is not None
        request = AddModel(
            name=action.model,
            source=action.source,
            sha256=action.sha256,
            peers=action.peers,
            revision=action.revision,
        )
        async with self._hive(action) as hive:
            if action.op == "replace":
                await hive.delete_model(action.model)
            await _follow(
                hive.add_model(request), f"adding model {action.model}", action.address, emit
            )

    async def _worker_binary(self, action: Action, emit: Emit) -> None:
        assert action.binary is not None
        async with self._hive(action) as hive:
            if action.op == "delete":
                await hive.delete_worker_binary(action.binary.name)
                return
            # Provisioning again replaces the entry: running workers keep their runtime until
            # the plan restarts them.
            what = f"provisioning worker binary {action.binary.name}"
            await _follow(hive.add_worker_binary(action.binary), what, action.address, emit)

    async def _rpc_server(self, action: Action) -> None:
        """Stop the hive's RPC server (delete, replace), then start it (create, replace)."""
        async with self._hive(action) as hive:
            if action.op in ("delete", "replace") and action.pid is not None:
                await hive.stop_rpc_server(action.pid)
            if action.op != "delete":
                assert action.rpc_server is not None
                await hive.spawn_rpc_server(action.rpc_server)

    async def _stop_worker(self, action: Action) -> None:
        assert action.pid is not None
        if action.spawn is not None:
            self._forget_worker(action.spawn.worker_id)
        async with self._hive(action) as hive:
            for proc in await hive.processes():
                if proc.pid == action.pid:
                    self._forget_worker(proc.worker_id)
            await hive.kill(action.pid)

    async def _spawn_worker(self, action: Action, emit: Emit) -> None:
        assert action.spawn is not None
        spawn = action.spawn
        async with self._hive(action) as hive:
            # A worker that outlived its hive is listed again once the hive is back: planned
            # while the hive was down, its spawn adopts it rather than starting a duplicate.
            running = [p for p in await hive.processes() if p.worker_id == spawn.worker_id]
            if action.op == "create" and running:
                proc = running[0]
            else:
                proc = await hive.spawn(spawn)
                await emit(SpawnedEvent(address=action.address, pid=proc.pid))
            deadline = time.monotonic() + self._ready_timeout_s
            checks = 0
            while self._worker_state(spawn.worker_id) not in ("idle", "busy"):
                if time.monotonic() > deadline:
                    raise RbeeError(
                        f"worker {spawn.worker_id} did not report idle within "
                        f"{self._ready_timeout_s:.0f} s (pid {proc.pid})"
                    )
                checks += 1
                if checks % 10 == 0 and proc.pid not in {p.pid for p in await hive.processes()}:
                    raise RbeeError(
                        f"worker {spawn.worker_id} (pid {proc.pid}) exited while starting",
                        hint=f"see ~/.local/state/rbee/workers/{spawn.worker_id}.log on hive "
                        f"{action.hive}",
                    )
                await asyncio.sleep(0.1)


async def _follow(
    events: AsyncIterator[OperationEvent],
    what: str,
    address: str = "",
    emit: Emit | None = None,
) -> None:
    """Follow a hive operation to its end, relaying progress to `emit`; fail unless it
    succeeded."""
    last = None
    async for event in events:
        last = event
        if emit is not None and event.state == "running":
            if event.message is not None:
                await emit(ProgressEvent(address=address, message=event.message))
            else:
                await emit(
                    ProgressEvent(
                        address=address, bytes_done=event.bytes_done, bytes_total=event.bytes_total
                    )
                )
    if last is None or last.state != "succeeded":
        cause = last.error if last is not None else "the hive closed the operation stream"
        raise RbeeError(f"{what} failed: {cause}")
