"""Daemon processes, started and stopped the one way rbee does it.

Start: detached in its own session, output appended to a log file, then polled on `/health`
until it answers; if it exits or never answers, the error carries the end of its log. Stop:
SIGTERM, then SIGKILL after a grace period. The keeper's local queen, the queen's local hives,
network hives (over SSH) and the hive's workers all go through here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import httpx
import psutil
from pydantic import ValidationError

from rbee.errors import RbeeError, UnavailableError
from rbee.paths import private_dir
from rbee.wire import CommandLine, Health

__all__ = [
    "file_tail",
    "own_processes",
    "probe_health",
    "spawn_detached",
    "start_daemon",
    "terminate",
    "wait_gone",
    "wait_healthy",
]

log = logging.getLogger(__name__)

_Args = TypeVar("_Args", bound=CommandLine)

_POLL_S = 0.05
_KILL_WAIT_S = 5.0


def spawn_detached(
    argv: Sequence[str],
    log_path: Path,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a daemon in its own session, output appended to `log_path`, reaped by a thread;
    `env` is added to this process's environment.

    The token travels in the environment (RBEE_TOKEN), never on the command line where `ps`
    would show it.
    """
    env = {**os.environ, **(env or {})}
    if token:
        env["RBEE_TOKEN"] = token
    private_dir(log_path.parent)
    # 0600 whatever this process's umask: a daemon's log holds what it was asked.
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as output:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    # Waiting in a thread keeps a dead child from lingering as a zombie.
    threading.Thread(target=_reap, args=(proc,), name=f"reap-{proc.pid}", daemon=True).start()
    return proc


def _reap(proc: subprocess.Popen[bytes]) -> None:
    returncode = proc.wait()
    log.info("event=child_exited pid=%d rc=%d", proc.pid, returncode)


async def probe_health(client: httpx.AsyncClient, url: str) -> Health | None:
    """`GET {url}/health`, or None when nothing (or something that is no rbee daemon) answers."""
    try:
        response = await client.get(url.rstrip("/") + "/health")
        if response.status_code != 200:
            return None
        return Health.model_validate(response.json())
    except (httpx.HTTPError, ValueError, ValidationError):
        return None


async def wait_healthy(
    what: str,
    url: str,
    *,
    accept: Callable[[Health], bool],
    exited: Callable[[], Awaitable[bool]],
    log_tail: Callable[[], Awaitable[str]],
    timeout_s: float,
    token: str | None = None,
    verify: ssl.SSLContext | bool = True,
    exit_check_s: float = 0.0,
    hint: str | None = None,
    timeout_hint: str | None = None,
) -> Health:
    """Poll `{url}/health` until an answer passes `accept`.

    A process that `exited` is an RbeeError (it would fail again the same way); one that does
    not answer within `timeout_s` is an UnavailableError (it may be slow: worth a retry).
    Both carry the end of its log and `hint` (`timeout_hint` instead for the second, when
    given). `exited` runs at most every `exit_check_s` seconds, for checks that cost a round
    trip (SSH). `verify`: how an https:// daemon's certificate is checked (a hive: the
    cluster's TLS, with the queen's certificate presented).
    """
    deadline = time.monotonic() + timeout_s
    next_exit_check = time.monotonic() + exit_check_s
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers, timeout=2.0, verify=verify) as client:
        while True:
            health = await probe_health(client, url)
            if health is not None and accept(health):
                return health
            now = time.monotonic()
            if now >= next_exit_check:
                next_exit_check = now + exit_check_s
                if await exited():
                    raise RbeeError(
                        f"{what} exited right after start; its log ends:\n{await log_tail()}",
                        hint=hint,
                    )
            if now >= deadline:
                raise UnavailableError(
                    f"{what} does not answer on {url}/health after {timeout_s:g} s; "
                    f"its log ends:\n{await log_tail()}",
                    hint=timeout_hint or hint,
                )
            await asyncio.sleep(_POLL_S * 2)


async def start_daemon(
    what: str,
    argv: Sequence[str],
    log_path: Path,
    url: str,
    *,
    token: str | None,
    accept: Callable[[Health, int], bool],
    timeout_s: float,
    verify: ssl.SSLContext | bool = True,
) -> int:
    """Spawn a daemon on this machine (`spawn_detached`) and wait until it is healthy
    (`wait_healthy`); its pid. `accept(health, pid)` tells its answer from another's."""
    proc = spawn_detached(argv, log_path, token)
    log.info("event=daemon_spawned what=%r pid=%d log=%s", what, proc.pid, log_path)

    async def exited() -> bool:
        return proc.poll() is not None

    async def log_tail() -> str:
        return file_tail(log_path)

    await wait_healthy(
        what,
        url,
        accept=lambda health: accept(health, proc.pid),
        exited=exited,
        log_tail=log_tail,
        timeout_s=timeout_s,
        token=token,
        verify=verify,
        hint=f"full log: {log_path}",
    )
    return proc.pid


def terminate(proc: psutil.Process, grace_s: float) -> Literal["term", "kill", "gone"]:
    """SIGTERM `proc`, SIGKILL it after `grace_s`; how it ended ("gone": it already had)."""
    try:
        proc.terminate()
    except psutil.NoSuchProcess:
        return "gone"
    if wait_gone(proc, grace_s):
        return "term"
    log.warning("event=kill pid=%d reason=ignored_sigterm grace_s=%s", proc.pid, grace_s)
    try:
        proc.kill()
    except psutil.NoSuchProcess:
        return "term"
    wait_gone(proc, _KILL_WAIT_S)
    return "kill"


def wait_gone(proc: psutil.Process, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `proc` to end; whether it did. A zombie has ended: an
    orphan's reaper (init, or a container's) may take seconds to collect it."""
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


def file_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ("no log" when there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return "\n".join(text[-lines:]) or "no output"


def own_processes(program: type[_Args]) -> Iterator[tuple[psutil.Process, _Args, float]]:
    """This user's processes running `program` (a daemon's command line class): each with its
    command line read back and its start time."""
    uid = os.getuid()
    # Only the command line of every process (one read each); owner and start time only of
    # the few that run the program: a plan, a heal check and the status page all list them.
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"]
        args = program.from_cmdline(cmdline) if cmdline else None
        if args is None:
            continue
        try:
            if proc.uids().real != uid:
                continue
            since = proc.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        yield proc, args, since
