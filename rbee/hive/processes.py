"""Worker processes, read from the OS: spawn, list, stop. The hive keeps no registry of them.

A worker's identity lives in its own command line (`--worker-id`, `--model`, `--port`, ...), so
any hive, including one restarted after the worker was spawned, lists it by scanning processes.
Workers run in their own session and outlive the hive that spawned them.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from rbee.daemon import spawn_detached
from rbee.errors import NotFoundError
from rbee.paths import contained, state_dir
from rbee.wire import SpawnWorker, WorkerProcess

__all__ = [
    "WORKER_MODULE",
    "WORKER_SCRIPT",
    "find_worker",
    "list_workers",
    "log_path",
    "parse_worker",
    "spawn_worker",
    "stop_worker",
    "worker_argv",
]

WORKER_MODULE = "rbee.worker.server"
WORKER_SCRIPT = "llm-worker-rbee"
_WORKER_HOST = "127.0.0.1"
_POLL_S = 0.05
_KILL_WAIT_S = 5.0
_log = logging.getLogger(__name__)


def log_path(worker_id: str) -> Path:
    """`~/.local/state/rbee/workers/<worker_id>.log`; ValueError for an id that escapes it."""
    directory = state_dir() / "workers"
    directory.mkdir(parents=True, exist_ok=True)
    return contained(directory, f"{worker_id}.log")


def worker_argv(
    request: SpawnWorker,
    model_path: Path,
    port: int,
    host: str = _WORKER_HOST,
    *,
    python: str = sys.executable,
) -> list[str]:
    """The worker's command line, run by its worker binary's `python`: every fact the hive
    lists later is a flag here."""
    argv = [
        python, "-m", WORKER_MODULE,
        "--worker-id", request.worker_id,
        "--hive", request.hive,
        "--model", request.model,
        "--model-path", str(model_path),
        "--worker-binary", request.worker_binary,
        "--host", host,
        "--port", str(port),
        "--slots", str(request.slots),
        "--ctx-size", str(request.ctx_size),
        "--device", request.device,
        "--queen-url", request.queen_url,
    ]  # fmt: skip
    if request.chat_format:
        argv += ["--chat-format", request.chat_format]
    return argv


def spawn_worker(
    request: SpawnWorker,
    python: str,
    model_path: Path,
    token: str | None,
    host: str = _WORKER_HOST,
) -> WorkerProcess:
    """Start a worker with its worker binary's `python` in its own session, logging to its log
    file; the token goes by env only.

    The worker listens on the hive's own address, so the queen reaches a network hive's
    workers (with the token) where the hive itself is reached.
    """
    log = log_path(request.worker_id)
    argv = worker_argv(request, model_path, _free_port(host), host, python=python)
    proc = spawn_detached(argv, log, token)
    try:
        started_at = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        started_at = time.time()
    worker = parse_worker(proc.pid, argv, started_at)
    assert worker is not None  # the hive's own argv always parses
    _log.info(
        "worker spawned worker_id=%s pid=%d port=%d log=%s",
        worker.worker_id, worker.pid, worker.port, log,
    )  # fmt: skip
    return worker


def parse_worker(pid: int, cmdline: Sequence[str], started_at: float) -> WorkerProcess | None:
    """The worker a command line describes, or None when it is not an rbee worker's."""
    if not _is_worker(cmdline):
        return None
    flags = _flags(cmdline)
    try:
        host = flags.get("host", _WORKER_HOST)
        port = int(flags["port"])
        return WorkerProcess(
            pid=pid,
            worker_id=flags["worker-id"],
            hive=flags["hive"],
            model=flags["model"],
            worker_binary=flags.get("worker-binary", "cpu"),
            port=port,
            url=f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}",
            slots=int(flags.get("slots", "1")),
            ctx_size=int(flags.get("ctx-size", "4096")),
            device=flags.get("device", "cpu"),
            started_at=started_at,
        )
    except (KeyError, ValueError):
        return None


def list_workers(models_root: Path) -> list[WorkerProcess]:
    """This hive's workers, found by scanning the process table.

    A worker belongs to the hive whose model catalog (`models_root`) holds the file it serves:
    so two hives of one user on one machine (tests, a benchmark beside a demo) never list or
    stop each other's workers.
    """
    uid = os.getuid()
    workers = []
    for proc in psutil.process_iter(["cmdline", "uids", "create_time"]):
        info = proc.info
        if not info["cmdline"] or info["uids"] is None or info["uids"].real != uid:
            continue
        worker = parse_worker(proc.pid, info["cmdline"], info["create_time"])
        if worker is not None and _serves_from(info["cmdline"], models_root):
            workers.append(worker)
    return sorted(workers, key=lambda w: (w.started_at, w.pid))


def find_worker(pid: int, models_root: Path) -> WorkerProcess:
    """This hive's rbee worker with this pid; NotFoundError for any other pid."""
    return _worker_process(pid, models_root)[1]


def stop_worker(pid: int, grace_s: float, models_root: Path) -> WorkerProcess:
    """SIGTERM the worker, SIGKILL it after `grace_s`; refuses (NotFoundError) non-workers."""
    proc, worker = _worker_process(pid, models_root)
    try:
        proc.terminate()
        if not _wait_gone(proc, grace_s):
            _log.warning("worker ignored SIGTERM pid=%d grace_s=%s: killing", pid, grace_s)
            proc.kill()
            _wait_gone(proc, _KILL_WAIT_S)
    except psutil.NoSuchProcess:
        pass
    _log.info("worker stopped worker_id=%s pid=%d", worker.worker_id, pid)
    return worker


def _worker_process(pid: int, models_root: Path) -> tuple[psutil.Process, WorkerProcess]:
    try:
        proc = psutil.Process(pid)
        if proc.uids().real == os.getuid():
            cmdline = proc.cmdline()
            worker = parse_worker(pid, cmdline, proc.create_time())
            if worker is not None and _serves_from(cmdline, models_root):
                return proc, worker
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    raise NotFoundError(f"pid {pid} is not a running rbee worker")


def _serves_from(cmdline: Sequence[str], models_root: Path) -> bool:
    model_path = _flags(cmdline).get("model-path")
    return model_path is not None and Path(model_path).resolve().is_relative_to(
        models_root.resolve()
    )


def _is_worker(cmdline: Sequence[str]) -> bool:
    if any(Path(arg).name == WORKER_SCRIPT for arg in cmdline[:2]):
        return True
    return any(
        cmdline[i] == "-m" and cmdline[i + 1] == WORKER_MODULE for i in range(len(cmdline) - 1)
    )


def _flags(cmdline: Sequence[str]) -> dict[str, str]:
    flags: dict[str, str] = {}
    args = iter(cmdline)
    for arg in args:
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        flags[key] = value if eq else next(args, "")
    return flags


def _wait_gone(proc: psutil.Process, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # An orphan whose parent never reaps it stays a zombie: it is gone all the same.
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
