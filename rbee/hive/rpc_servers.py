"""This hive's RPC server, read from the OS as its workers are: spawn, list, stop.

A hive that a worker on another hive spans runs one `rpc-server-rbee` (llama.cpp's RPC server
behind a mutual-TLS gate, `rbee.worker.rpc_server`), with the runtime of the spanning worker's
binary. Its identity is the hive's own certificate, so the spanning worker checks it reaches
this hive. Like a worker, it lives in its own session and is found again by its command line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psutil

from rbee.errors import NotFoundError
from rbee.hive.processes import device_env, log_path, started_at
from rbee.process import own_processes, spawn_detached, terminate
from rbee.wire import RpcServerArgs, RpcServerProcess, SpawnRpcServer

__all__ = ["LOG_NAME", "list_rpc_servers", "spawn_rpc_server", "stop_rpc_server"]

#: The name its log goes by among the workers' logs (`GET /v1/worker-logs/rpc-server`).
LOG_NAME = "rpc-server"

_log = logging.getLogger(__name__)


def spawn_rpc_server(
    wanted: SpawnRpcServer, python: str, hive: str, identity: Path, host: str, cache: Path
) -> RpcServerProcess:
    """Start the hive's RPC server with the worker binary's `python`, its gate on `host`
    (the hive's address), its tensor cache in `cache`, its log beside the workers' (as
    worker `rpc-server`)."""
    args = RpcServerArgs(
        **wanted.model_dump(), hive=hive, host=host, cache_dir=str(cache), identity=str(identity)
    )
    log = log_path(LOG_NAME)
    proc = spawn_detached(args.command(python), log, None, env=device_env(args.device))
    server = RpcServerProcess(**args.model_dump(), pid=proc.pid, started_at=started_at(proc.pid))
    _log.info("rpc server spawned pid=%d port=%d device=%s", proc.pid, args.port, args.device)
    return server


def list_rpc_servers(hive: str, identity: Path) -> list[RpcServerProcess]:
    """The RPC servers of this hive (its name and identity on their command line) that run
    as this user."""
    return [server for _, server in _servers(hive, identity)]


def stop_rpc_server(pid: int, grace_s: float, hive: str, identity: Path) -> RpcServerProcess:
    """SIGTERM the hive's RPC server `pid`, SIGKILL after `grace_s`; NotFoundError for any
    other pid."""
    for proc, server in _servers(hive, identity):
        if server.pid == pid:
            terminate(proc, grace_s)
            _log.info("rpc server stopped pid=%d", pid)
            return server
    raise NotFoundError(f"pid {pid} is not this hive's RPC server")


def _servers(hive: str, identity: Path) -> list[tuple[psutil.Process, RpcServerProcess]]:
    found = [
        (proc, RpcServerProcess(**args.model_dump(), pid=proc.pid, started_at=since))
        for proc, args, since in own_processes(RpcServerArgs)
        if args.hive == hive and Path(args.identity) == identity
    ]
    return sorted(found, key=lambda pair: pair[1].started_at)
