"""`rbee-hive`: the hive daemon. Serves the hive's routes; its workers outlive it.

Who may call it: with `--identity` (how the queen starts every hive), only a client holding a
certificate of the cluster's CA: the queen for every route, another hive for the copies it
takes (`GET …/payload`, `GET /v1/runtimes/…`). Without one, a bearer token (`RBEE_TOKEN`) on
every route but /health; a hive with neither refuses to start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from rbee.clients import use_identity
from rbee.daemon import (
    BearerAuth,
    BrowserGuard,
    Listener,
    PeerAuth,
    env_token,
    fail,
    listen,
    own_names,
    run_daemon,
)
from rbee.errors import RbeeError
from rbee.hive.app import SERVICE, create_app
from rbee.net import LOOPBACK
from rbee.pki import Identity, Role
from rbee.wire import HiveArgs

__all__ = ["main"]

_log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the hive until SIGTERM/SIGINT. Spawned workers keep running after it exits."""
    args = HiveArgs.parse_cli(argv)
    token = env_token(args.token)
    sock = listen(SERVICE, args.host, args.port)
    # Workers listen where the hive listens; a wildcard bind gives them loopback only.
    worker_host = LOOPBACK if args.host in ("0.0.0.0", "::") else args.host
    names = own_names(args.host)
    if args.identity is not None:
        path = Path.home() / args.identity  # a relative path is the home's
        try:
            identity = Identity(path)
        except (OSError, ValueError) as exc:
            fail(RbeeError(f"cannot use the TLS identity {path}: {exc}"))
        use_identity(identity)
        app = create_app(args.name, worker_host=worker_host, identity=identity)
        listener = Listener(BrowserGuard(PeerAuth(app, _allowed), names), sock, identity.server)
    elif token:
        app = create_app(args.name, token=token, worker_host=worker_host)
        listener = Listener(BrowserGuard(BearerAuth(app, token), names), sock)
    else:
        fail(
            RbeeError(
                f"{SERVICE} needs a credential: --identity (a TLS identity from the queen) or "
                "RBEE_TOKEN",
                hint="hives are started by the queen (`rbee apply`), which gives them one",
            )
        )
    _log.info(
        "listening host=%s port=%d name=%s queen_url=%s auth=%s",
        args.host, sock.getsockname()[1], args.name, args.queen_url,
        "mtls" if args.identity else "bearer",
    )  # fmt: skip
    run_daemon(listener)


def _allowed(role: Role, method: str, path: str) -> bool:
    """The queen calls everything; another hive only takes copies (models, runtime wheels)."""
    if role == "queen":
        return True
    return (
        role == "hive"
        and method == "GET"
        and (path.endswith("/payload") or path.startswith("/v1/runtimes/"))
    )


if __name__ == "__main__":
    main()
