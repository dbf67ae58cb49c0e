"""How the keeper reaches the queen: which queen ($RBEE_QUEEN_URL or the YAML's), with which
credential, and a client for it; `connect` also starts a local queen that is down.

Every command module imports this one when `rbee` starts, so it imports the HTTP client, the
config models and the daemon starter only when a command reaches for the queen.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rbee.cli.console import err

if TYPE_CHECKING:
    from pathlib import Path

    from rbee.clients import QueenClient
    from rbee.config.models import Queen

__all__ = [
    "QUEEN_URL_ENV",
    "client_for",
    "client_for_yaml",
    "connect",
    "connect_yaml",
    "credential",
    "ensure_queen",
    "is_local",
    "reached_queen",
]

QUEEN_URL_ENV = "RBEE_QUEEN_URL"


def reached_queen(queen: Queen) -> Queen:
    """The queen this keeper talks to: the YAML's, or the one $RBEE_QUEEN_URL names (a queen
    on another machine, reached from CI with an admin key in $RBEE_API_KEY)."""
    from pydantic import ValidationError

    from rbee.config.models import Queen
    from rbee.errors import RbeeError

    url = os.environ.get(QUEEN_URL_ENV)
    if not url:
        return queen
    try:
        return Queen(url=url, token=queen.token)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise RbeeError(f"{QUEEN_URL_ENV}={url!r} is not a queen URL: {reason}") from None


def client_for(queen: Queen) -> QueenClient:
    """A client for the queen the keeper reaches (see `reached_queen`); starts nothing."""
    from rbee.clients import QueenClient

    reached = reached_queen(queen)
    if reached is not queen:
        return QueenClient(reached.url, reached.token, named_by=QUEEN_URL_ENV)
    return QueenClient(queen.url, credential(queen), named_by="queen.url in the YAML")


def client_for_yaml(file: Path) -> QueenClient:
    """`client_for` the queen of the cluster YAML in `file`; starts nothing."""
    from rbee.config.load import load_cluster

    return client_for(load_cluster(file).queen)


def ensure_queen(queen: Queen, timeout_s: float = 20.0) -> tuple[QueenClient, int | None]:
    """A client for a running queen; a queen of this machine that is down is started first,
    unless $RBEE_QUEEN_URL names the queen: then it is only ever reached, never started.

    Returns the client and the pid of a queen started now (None when one was running).
    """
    from rbee.errors import UnavailableError

    if queen.tls is not None and queen.tls.cert is None and is_local(queen):
        # rbee's own certificate is the cluster CA's: made before the first call, so that
        # this keeper trusts it (the queen finds it made).
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
    from rbee.cli.local_queen import start_local_queen

    return client, start_local_queen(queen, timeout_s)


def connect(queen: Queen) -> QueenClient:
    """A client for the queen the keeper reaches; a local queen that is down is started (and
    said so on stderr)."""
    client, started = ensure_queen(queen)
    if started is not None:
        err.print(f"[dim]started local queen (pid {started}) at {queen.url}[/dim]")
    return client


def connect_yaml(file: Path) -> QueenClient:
    """`connect` to the queen of the cluster YAML in `file`."""
    from rbee.config.load import load_cluster

    return connect(load_cluster(file).queen)


def credential(queen: Queen) -> str | None:
    """The cluster token the keeper sends the YAML's queen: the YAML's `queen.token`, else,
    for a queen on this machine, the one rbee keeps here (`rbee.credentials`, made on first
    use: the queen reads the same file)."""
    if queen.token is not None or not is_local(queen):
        return queen.token
    from rbee.credentials import cluster_token

    return cluster_token()


def is_local(queen: Queen) -> bool:
    """Whether the queen's URL names this machine (loopback or one of its addresses)."""
    return queen.is_loopback or urlsplit(queen.url).hostname in _local_addresses()


def _local_addresses() -> set[str]:
    """Every IP address of this machine's interfaces."""
    import socket

    import psutil

    return {
        address.address.split("%")[0]
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family in (socket.AF_INET, socket.AF_INET6)
    }
