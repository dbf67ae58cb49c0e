"""`llm-worker-rbee`: the worker process the hive spawns (one GGUF, N slots, one port).

Its flags are `rbee.wire.WorkerArgs`: the hive writes them and reads them back from the
process table to list its workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from rbee.daemon import (
    BearerAuth,
    BrowserGuard,
    Listener,
    PeerAuth,
    bind_unix,
    env_token,
    fail,
    listen,
    own_names,
    run_daemon,
)
from rbee.errors import NotFoundError, RbeeError
from rbee.pki import Identity
from rbee.wire import WorkerArgs
from rbee.worker.app import SERVICE, create_app
from rbee.worker.llama_output import close_devnull_files

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Bind the port, serve /health at once, load the model in the background, serve.

    With `--identity` (how a hive of the queen starts it) it serves mutual TLS and only the
    queen may call it; without, every route but /health needs the token in $RBEE_TOKEN. A
    worker with neither refuses to start: it would answer anyone on the machine, around the
    queen's keys and limits. With `--socket` it also serves a Unix socket, where a process of
    its own user counts as the queen (`rbee.daemon`: the kernel says who connects)."""
    config = WorkerArgs.parse_cli(argv)
    token = env_token(None)
    sock = listen(SERVICE, config.host, config.port)
    if not os.path.isfile(config.model_path):
        fail(
            NotFoundError(
                f"model file {config.model_path} does not exist", hint="check --model-path"
            )
        )
    port = int(sock.getsockname()[1])
    if port != config.port:
        config = config.model_copy(update={"port": port})
    names = own_names(config.host)
    if config.identity is not None:
        try:
            identity = Identity(Path(config.identity))
        except (OSError, ValueError) as exc:
            fail(RbeeError(f"cannot use the TLS identity {config.identity}: {exc}"))
        app = create_app(config, identity=identity)
        guarded = PeerAuth(app, lambda role, method, path: role == "queen")
        listener = Listener(BrowserGuard(guarded, names), sock, identity.server)
    elif token:
        app = create_app(config, token)
        listener = Listener(BrowserGuard(BearerAuth(app, token), names), sock)
    else:
        fail(RbeeError(f"{SERVICE} needs --identity or RBEE_TOKEN", hint=WorkerArgs.DESCRIPTION))
    listeners = [listener]
    ours = None
    if config.socket is not None:
        try:
            local = bind_unix(Path(config.socket))
            ours = os.stat(config.socket).st_ino
        except OSError as exc:
            fail(RbeeError(f"cannot listen on {config.socket}: {exc.strerror or exc}"))
        listeners.append(Listener(listener.app, local, lifespan=False))
    run_daemon(*listeners)
    if ours is not None:
        _remove_socket(Path(config.socket or ""), ours)
    close_devnull_files()
    raise SystemExit(app.state.worker.exit_code)


def _remove_socket(path: Path, inode: int) -> None:
    """Remove this worker's socket at exit, unless a successor has bound the path since."""
    try:
        if path.lstat().st_ino == inode:
            path.unlink()
    except OSError:
        pass


if __name__ == "__main__":
    main()
