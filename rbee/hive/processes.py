"""Worker processes, read from the OS: spawn, list, stop. The hive keeps no registry of them.

A worker's identity lives in its own command line (`--worker-id`, `--model`, `--port`, ...), so
any hive, including one restarted after the worker was spawned, lists it by scanning processes.
Workers run in their own session and outlive the hive that spawned them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from rbee.errors import NotFoundError
from rbee.net import LOOPBACK
from rbee.paths import contained, private_dir, socket_dir, state_dir
from rbee.pki import write_private
from rbee.process import own_processes, spawn_detached, terminate
from rbee.wire import SpawnRequest, WorkerArgs, WorkerProcess

__all__ = [
    "device_env",
    "find_worker",
    "list_workers",
    "log_path",
    "parse_worker",
    "spawn_worker",
    "started_at",
    "stop_worker",
]

_log = logging.getLogger(__name__)


def log_path(worker_id: str) -> Path:
    """`~/.local/state/rbee/workers/<worker_id>.log`; ValueError for an id that escapes it."""
    directory = state_dir() / "workers"
    directory.mkdir(parents=True, exist_ok=True)
    return contained(directory, f"{worker_id}.log")


def spawn_worker(
    request: SpawnRequest,
    python: str,
    model_path: Path,
    token: str | None,
    host: str = LOOPBACK,
) -> WorkerProcess:
    """Start a worker with its worker binary's `python` in its own session, logging to its log
    file. Its TLS identity (from the queen, in the request) goes to a 0600 file named on its
    command line; a token (a hive without TLS) by env only.

    The worker listens on the hive's own address, so the queen reaches a network hive's
    workers where the hive itself is reached.
    """
    log = log_path(request.worker_id)
    identity = None
    if request.tls_identity is not None:
        directory = private_dir(state_dir() / "tls" / "workers")
        path = contained(directory, f"{request.worker_id}.pem")
        identity = str(write_private(path, request.tls_identity.encode()))
    args = WorkerArgs(
        **request.model_dump(exclude={"tls_identity"}),
        model_path=str(model_path),
        host=host,
        port=_free_port(host),
        identity=identity,
        socket=_socket_path(request.worker_id),
    )
    proc = spawn_detached(args.command(python), log, token, env=device_env(args.device))
    worker = WorkerProcess(**args.model_dump(), pid=proc.pid, started_at=started_at(proc.pid))
    _log.info(
        "worker spawned worker_id=%s pid=%d port=%d log=%s",
        worker.worker_id, worker.pid, worker.port, log,
    )  # fmt: skip
    return worker


def _socket_path(worker_id: str) -> str | None:
    """A short path for the worker's Unix socket, this hive's and this worker's alone (the
    queen on this machine relays there); None where the user has no private directory for
    sockets: the worker then serves TLS alone."""
    try:
        directory = socket_dir()
    except OSError as exc:
        _log.warning("no private directory for sockets: workers serve TLS alone error=%s", exc)
        return None
    name = hashlib.sha256(f"{state_dir()}\0{worker_id}".encode()).hexdigest()[:24]
    return str(directory / f"{name}.sock")


def device_env(device: str) -> dict[str, str]:
    """The environment that pins a worker to its devices: `cuda:N` sees GPU N alone (as its
    GPU 0), `cuda:N,cuda:M` those two (as 0 and 1), so no layer or buffer lands on another
    GPU."""
    if not device.startswith("cuda:"):
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(d.partition(":")[2] for d in device.split(","))}


def parse_worker(pid: int, cmdline: Sequence[str], started_at: float) -> WorkerProcess | None:
    """The worker a command line describes, or None when it is not an rbee worker's."""
    args = WorkerArgs.from_cmdline(cmdline)
    if args is None:
        return None
    return WorkerProcess(**args.model_dump(), pid=pid, started_at=started_at)


def list_workers(models_root: Path) -> list[WorkerProcess]:
    """This hive's workers, found by scanning the process table.

    A worker belongs to the hive whose model catalog (`models_root`) holds the file it serves:
    so two hives of one user on one machine (tests, a benchmark beside a demo) never list or
    stop each other's workers.
    """
    workers = []
    for proc, args, since in own_processes(WorkerArgs):
        worker = WorkerProcess(**args.model_dump(), pid=proc.pid, started_at=since)
        if _serves_from(worker, models_root):
            workers.append(worker)
    return sorted(workers, key=lambda w: (w.started_at, w.pid))


def started_at(pid: int) -> float:
    """When a process this hive just spawned started (now, if it is already gone)."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return time.time()


def find_worker(pid: int, models_root: Path) -> WorkerProcess:
    """This hive's rbee worker with this pid; NotFoundError for any other pid."""
    return _worker_process(pid, models_root)[1]


def stop_worker(pid: int, grace_s: float, models_root: Path) -> WorkerProcess:
    """SIGTERM the worker, SIGKILL it after `grace_s`; refuses (NotFoundError) non-workers."""
    proc, worker = _worker_process(pid, models_root)
    terminate(proc, grace_s)
    _log.info("worker stopped worker_id=%s pid=%d", worker.worker_id, pid)
    return worker


def _worker_process(pid: int, models_root: Path) -> tuple[psutil.Process, WorkerProcess]:
    try:
        proc = psutil.Process(pid)
        if proc.uids().real == os.getuid():
            worker = parse_worker(pid, proc.cmdline(), proc.create_time())
            if worker is not None and _serves_from(worker, models_root):
                return proc, worker
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    raise NotFoundError(f"pid {pid} is not a running rbee worker")


def _serves_from(worker: WorkerProcess, models_root: Path) -> bool:
    return Path(worker.model_path).resolve().is_relative_to(models_root.resolve())


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
