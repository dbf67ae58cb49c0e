"""`rbee-hive`: the hive daemon. Serves the hive's routes; its workers outlive it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rbee.daemon import BearerAuth, BrowserGuard, env_token, listen, own_names, run_daemon
from rbee.hive.app import SERVICE, create_app
from rbee.net import LOOPBACK
from rbee.wire import HiveArgs

__all__ = ["main"]

_log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the hive until SIGTERM/SIGINT. Spawned workers keep running after it exits."""
    args = HiveArgs.parse_cli(argv)
    token = env_token(args.token)
    sock = listen(SERVICE, args.host, args.port, token)
    port = sock.getsockname()[1]
    _log.info(
        "listening host=%s port=%d name=%s queen_url=%s auth=%s",
        args.host, port, args.name, args.queen_url, "bearer" if token else "off",
    )  # fmt: skip
    # Workers listen where the hive listens; a wildcard bind gives them loopback only.
    worker_host = LOOPBACK if args.host in ("0.0.0.0", "::") else args.host
    app = create_app(args.name, token=token, worker_host=worker_host)
    guarded = BrowserGuard(BearerAuth(app, token) if token else app, own_names(args.host))
    run_daemon(guarded, sock)


if __name__ == "__main__":
    main()
