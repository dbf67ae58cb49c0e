"""`rbee-hive`: the hive daemon. Serves the hive's routes; its workers outlive it."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import Sequence

from rbee.daemon import (
    BearerAuth,
    bind,
    fail,
    require_token_off_loopback,
    run_daemon,
    setup_logging,
)
from rbee.errors import RbeeError
from rbee.hive.app import SERVICE, create_app

__all__ = ["DEFAULT_PORT", "main", "parse_args"]

DEFAULT_PORT = 7835
_log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The daemon's command line."""
    parser = argparse.ArgumentParser(
        prog=SERVICE,
        description="rbee hive daemon: model catalog and worker processes of this machine.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument(
        "--name", default=socket.gethostname(), help="this hive's name (default: hostname)"
    )
    parser.add_argument("--queen-url", default=None, help="the queen this hive belongs to")
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token required on every route but /health (default: $RBEE_TOKEN)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the hive until SIGTERM/SIGINT. Spawned workers keep running after it exits."""
    args = parse_args(argv)
    token = args.token or os.environ.get("RBEE_TOKEN") or None
    try:
        require_token_off_loopback(args.host, token, SERVICE)
        sock = bind(args.host, args.port)
    except RbeeError as exc:
        fail(exc)
    setup_logging(SERVICE)
    port = sock.getsockname()[1]
    _log.info(
        "listening host=%s port=%d name=%s queen_url=%s auth=%s",
        args.host, port, args.name, args.queen_url, "bearer" if token else "off",
    )  # fmt: skip
    # Workers listen where the hive listens; a wildcard bind gives them loopback only.
    worker_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    app = create_app(args.name, token=token, worker_host=worker_host)
    run_daemon(BearerAuth(app, token) if token else app, sock)


if __name__ == "__main__":
    main()
