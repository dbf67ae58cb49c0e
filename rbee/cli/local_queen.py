"""A queen on this machine as a detached daemon: started when the keeper needs it and it is
down, its command line, its log, and stopping it. Reaching a queen is `rbee.cli.reach`.

Starting and stopping import what they use (asyncio, psutil, the daemon starter) when they
run: most commands only reach a queen that is up.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from rbee.cli.reach import QUEEN_URL_ENV, client_for, is_local
from rbee.clients import QueenClient, queen_tls
from rbee.config.models import Queen
from rbee.defaults import QUEEN_PORT
from rbee.errors import RbeeError, UnavailableError
from rbee.net import LOOPBACK
from rbee.paths import state_dir
from rbee.wire import QueenArgs

__all__ = ["ensure_queen", "local_queen_args", "queen_log", "stop_queen"]


def queen_log() -> Path:
    """The log file of a queen this machine runs detached."""
    return state_dir() / "queen.log"


def ensure_queen(queen: Queen, timeout_s: float = 20.0) -> tuple[QueenClient, int | None]:
    """A client for a running queen; a loopback queen that is down is started first, unless
    $RBEE_QUEEN_URL names the queen: then it is only ever reached, never started.

    Returns the client and the pid of a queen started now (None when one was running).
    """
    if queen.tls is not None and queen.tls.cert is None and is_local(queen):
        # rbee's own certificate is the cluster CA's: made here first, so that this keeper
        # trusts it from its first call (the queen finds it made).
        from rbee.credentials import tls_dir
        from rbee.pki import Authority

        Authority(tls_dir())
    client = client_for(queen)
    if client.health() is not None:
        return client, None
    if os.environ.get(QUEEN_URL_ENV):
        raise UnavailableError(
            f"the queen at {client.url} ({QUEEN_URL_ENV}) is not answering",
            hint=f"check {QUEEN_URL_ENV} and that the queen runs on its host; rbee never "
            f"starts a queen when {QUEEN_URL_ENV} is set",
        )
    if not is_local(queen):
        raise UnavailableError(
            f"the queen at {queen.url} is not answering",
            hint="rbee only starts a queen on this machine; start it on its host",
        )
    import asyncio

    from rbee.process import start_daemon

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
            verify=queen_tls(),
        )
    )
    return client, pid


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
