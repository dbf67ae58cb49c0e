"""`queen-rbee`: serve the queen on its port (7833 by default)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rbee.daemon import env_token, listen, run_daemon
from rbee.net import LOCAL_HOSTS, http_url
from rbee.paths import state_dir
from rbee.queen.app import create_app
from rbee.queen.store import Store
from rbee.wire import QueenArgs

__all__ = ["main"]

_log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `queen-rbee`."""
    args = QueenArgs.parse_cli(argv)
    token = env_token(args.token)
    sock = listen(QueenArgs.SCRIPT, args.host, args.port, token)
    public_url = args.public_url or http_url(args.host, args.port)
    db = args.db or state_dir() / "queen.db"
    _log.info(
        "listening host=%s port=%d url=%s auth=%s",
        args.host, sock.getsockname()[1], public_url, "token" if token else "keys",
    )  # fmt: skip
    app = create_app(
        Store(db),
        public_url,
        token,
        open_on_loopback=args.host in LOCAL_HOSTS,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        hive_check_interval_s=args.hive_check_interval,
    )
    run_daemon(app, sock)


if __name__ == "__main__":
    main()
