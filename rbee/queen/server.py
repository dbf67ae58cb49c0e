"""`queen-rbee`: serve the queen on its port (7833 by default)."""

from __future__ import annotations

import argparse
import os

from rbee.daemon import (
    BearerAuth,
    bind,
    fail,
    require_token_off_loopback,
    run_daemon,
    setup_logging,
)
from rbee.errors import RbeeError
from rbee.paths import state_dir
from rbee.queen.app import create_app
from rbee.queen.hive_registry import HiveRegistry
from rbee.queen.store import Store

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of `queen-rbee`."""
    parser = argparse.ArgumentParser(
        prog="queen-rbee",
        description="The rbee queen: worker registry, plan/apply, OpenAI-compatible routing.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=7833, help="port to listen on")
    parser.add_argument(
        "--token", default=os.environ.get("RBEE_TOKEN"), help="bearer token (env RBEE_TOKEN)"
    )
    parser.add_argument(
        "--public-url",
        help="URL hives and workers reach the queen at (default http://HOST:PORT)",
    )
    parser.add_argument("--db", help="SQLite file (default ~/.local/state/rbee/queen.db)")
    parser.add_argument(
        "--hive-check-interval",
        type=float,
        default=15.0,
        help="seconds between health checks of every hive (default 15)",
    )
    args = parser.parse_args(argv)
    setup_logging("queen-rbee")
    try:
        require_token_off_loopback(args.host, args.token, "queen-rbee")
        sock = bind(args.host, args.port)
    except RbeeError as exc:
        fail(exc)
    host = f"[{args.host}]" if ":" in args.host else args.host
    public_url = args.public_url or f"http://{host}:{args.port}"
    db = args.db or state_dir() / "queen.db"
    app = create_app(Store(db), HiveRegistry(db), public_url, args.token, args.hive_check_interval)
    run_daemon(BearerAuth(app, args.token), sock)


if __name__ == "__main__":
    main()
