"""`queen-rbee`: serve the queen on its port (7833 by default), and the cluster's own traffic
on its mutual-TLS port (the next one, 7834 by default).

The front door takes API keys and the cluster token (`--token`, $RBEE_TOKEN, else the token
stored on this machine, made on first use). The cluster port takes only certificates of the
cluster's CA (`rbee.pki`), which lives beside the queen: workers heartbeat there, and the queen
calls hives and workers with its own certificate.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

from rbee.clients import use_identity
from rbee.credentials import cluster_token, tls_dir
from rbee.daemon import Listener, bind, env_token, fail, listen, run_daemon
from rbee.errors import RbeeError
from rbee.net import LOOPBACK, LOOPBACK_NAMES, http_url, https_url
from rbee.paths import state_dir
from rbee.pki import Authority, Identity, public_context, write_private
from rbee.queen.app import cluster_app, create_app
from rbee.queen.control.store import Store
from rbee.wire import QueenArgs

__all__ = ["main"]

_log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `queen-rbee`."""
    args = QueenArgs.parse_cli(argv)
    sock = listen(QueenArgs.SCRIPT, args.host, args.port)
    port = sock.getsockname()[1]
    try:
        cluster_sock = bind(args.host, _cluster_port(args))
    except RbeeError as exc:
        fail(exc)
    token = env_token(args.token) or cluster_token()
    public_url = args.public_url or (https_url if args.tls_cert else http_url)(args.host, port)
    public_host = urlsplit(public_url).hostname or LOOPBACK
    cluster_url = https_url(public_host, cluster_sock.getsockname()[1])
    # The queen's certificate, new at each start, names every address it may be reached at.
    authority = Authority(tls_dir())
    hosts = [public_host, args.host, *LOOPBACK_NAMES, socket.gethostname(), socket.getfqdn()]
    path = write_private(tls_dir() / "queen.pem", authority.issue("queen", "queen", hosts))
    identity = Identity(path)
    use_identity(identity, authority)
    db = args.db or state_dir() / "queen.db"
    _log.info(
        "listening host=%s port=%d url=%s cluster_url=%s",
        args.host, port, public_url, cluster_url,
    )  # fmt: skip
    app = create_app(
        Store(db),
        public_url,
        token,
        cluster_url=cluster_url,
        identity=identity,
        identity_hosts=hosts,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        hive_check_interval_s=args.hive_check_interval,
    )
    run_daemon(
        Listener(app, sock, _front_tls(args, identity)),
        Listener(cluster_app(app.queen), cluster_sock, identity.server, lifespan=False),
    )


def _front_tls(args: QueenArgs, identity: Identity) -> ssl.SSLContext | None:
    """The front door's TLS: none, the queen's own certificate, or the operator's files."""
    if args.tls_cert is None:
        return None
    if args.tls_cert == "own":
        return identity.front()
    try:
        return public_context(args.tls_cert, args.tls_key)
    except (OSError, ValueError) as exc:
        fail(RbeeError(f"cannot serve TLS with --tls-cert {args.tls_cert}: {exc}"))


def _cluster_port(args: QueenArgs) -> int:
    """The cluster port: as given, else the one after the queen's (7834 beside 7833), so a
    restarted queen is where its workers heartbeat. Port 0 (tests) takes any free one."""
    if args.cluster_port is not None:
        return args.cluster_port
    return args.port + 1 if args.port else 0


if __name__ == "__main__":
    main()
