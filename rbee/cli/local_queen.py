"""Starting and stopping a queen on this machine, as a detached daemon process."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from rbee.clients import QueenClient
from rbee.config.models import Queen
from rbee.defaults import QUEEN_PORT
from rbee.errors import RbeeError, UnavailableError
from rbee.net import LOOPBACK
from rbee.paths import state_dir
from rbee.process import start_daemon
from rbee.wire import QueenArgs

__all__ = ["ensure_queen", "is_local", "local_queen_args", "queen_log", "stop_queen"]


def queen_log() -> Path:
    return state_dir() / "queen.log"


def ensure_queen(queen: Queen, timeout_s: float = 20.0) -> tuple[QueenClient, int | None]:
    """A client for a running queen; a loopback queen that is down is started first.

    Returns the client and the pid of a queen started now (None when one was running).
    """
    client = QueenClient(queen.url, queen.token)
    if client.health() is not None:
        return client, None
    if not is_local(queen):
        raise UnavailableError(
            f"the queen at {queen.url} is not answering",
            hint="rbee only starts a queen on this machine; start it on its host",
        )
    pid = asyncio.run(
        start_daemon(
            "the queen",
            local_queen_args(queen).command(),
            queen_log(),
            queen.url,
            token=queen.token,
            # Any queen will do: one started by a concurrent `rbee` call answers as well.
            accept=lambda health, pid: health.service == QueenArgs.SCRIPT,
            timeout_s=timeout_s,
        )
    )
    return client, pid


def local_queen_args(queen: Queen) -> QueenArgs:
    """The command line of the YAML's queen run on this machine: its URL's host and port."""
    parts = urlsplit(queen.url)
    return QueenArgs(host=parts.hostname or LOOPBACK, port=parts.port or QUEEN_PORT)


def stop_queen(client: QueenClient, timeout_s: float = 15.0) -> int | None:
    """Ask a running queen to shut down and wait until its process is gone; returns its pid."""
    health = client.health()
    if health is None:
        return None
    client.shutdown()
    try:
        psutil.Process(health.pid).wait(timeout_s)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired as exc:
        raise RbeeError(
            f"the queen (pid {health.pid}) did not stop within {timeout_s:.0f} s"
        ) from exc
    return health.pid


def is_local(queen: Queen) -> bool:
    """Whether the queen's URL names this machine (loopback or one of its addresses)."""
    return queen.is_loopback or urlsplit(queen.url).hostname in _local_addresses()


def _local_addresses() -> set[str]:
    """Every IP address of this machine's interfaces."""
    return {
        address.address.split("%")[0]
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family in (socket.AF_INET, socket.AF_INET6)
    }
