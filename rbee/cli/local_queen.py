"""A queen on this machine as a detached daemon: started when the keeper needs it and it is
down, its command line, its log, and stopping it. Reaching a queen is `rbee.cli.reach`.

Starting and stopping import what they use (asyncio, psutil, the daemon starter) when they
run: most commands only reach a queen that is up.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from rbee.clients import QueenClient, queen_tls
from rbee.config.models import Queen
from rbee.defaults import QUEEN_PORT
from rbee.errors import RbeeError
from rbee.net import LOOPBACK
from rbee.paths import state_dir
from rbee.wire import QueenArgs

__all__ = ["local_queen_args", "queen_log", "start_local_queen", "stop_queen"]


def queen_log() -> Path:
    """The log file of a queen this machine runs detached."""
    return state_dir() / "queen.log"


def start_local_queen(queen: Queen, timeout_s: float = 20.0) -> int:
    """Start the YAML's queen on this machine, detached, and wait until it answers; its pid.

    A queen started meanwhile by a concurrent `rbee` call answers as well. Reaching it first
    (`rbee.cli.reach.ensure_queen`) made the CA its own TLS certificate needs."""
    import asyncio

    from rbee.process import start_daemon

    return asyncio.run(
        start_daemon(
            "the queen",
            local_queen_args(queen).command(),
            queen_log(),
            queen.url,
            token=queen.token,
            accept=lambda health, pid: health.service == QueenArgs.SCRIPT,
            timeout_s=timeout_s,
            verify=queen_tls(),
        )
    )


def local_queen_args(queen: Queen) -> QueenArgs:
    """The command line of the YAML's queen run on this machine: its URL's host and port, and
    its front door's TLS."""
    parts = urlsplit(queen.url)
    tls = queen.tls
    return QueenArgs(
        host=parts.hostname or LOOPBACK,
        port=parts.port or QUEEN_PORT,
        tls_cert=None if tls is None else tls.cert or "own",
        tls_key=None if tls is None else tls.key,
    )


def stop_queen(client: QueenClient, timeout_s: float = 15.0) -> int | None:
    """Ask a running queen to shut down and wait until its process is gone; returns its pid."""
    import psutil

    from rbee.process import wait_gone

    health = client.health()
    if health is None:
        return None
    try:
        queen = psutil.Process(health.pid)
    except psutil.NoSuchProcess:
        return health.pid
    client.shutdown()
    # Our kept-alive connection would hold the queen's graceful shutdown (5 s over TLS).
    client.close()
    if not wait_gone(queen, timeout_s):
        raise RbeeError(f"the queen (pid {health.pid}) did not stop within {timeout_s:.0f} s")
    return health.pid
