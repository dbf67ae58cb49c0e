"""`llm-worker-rbee`: the worker process the hive spawns (one GGUF, N slots, one port).

Its flags are `rbee.wire.WorkerArgs`: the hive writes them and reads them back from the
process table to list its workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from rbee.daemon import BearerAuth, BrowserGuard, env_token, fail, listen, own_names, run_daemon
from rbee.errors import NotFoundError
from rbee.wire import WorkerArgs
from rbee.worker.app import SERVICE, create_app
from rbee.worker.llama_output import close_devnull_files

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Bind the port, serve /health at once, load the model in the background, serve."""
    config = WorkerArgs.parse_cli(argv)
    token = env_token(None)
    sock = listen(SERVICE, config.host, config.port, token)
    if not os.path.isfile(config.model_path):
        fail(
            NotFoundError(
                f"model file {config.model_path} does not exist", hint="check --model-path"
            )
        )
    port = int(sock.getsockname()[1])
    if port != config.port:
        config = config.model_copy(update={"port": port})
    app = create_app(config, token)
    # With a cluster token, every address demands it, loopback too: otherwise anyone on the
    # machine could reach the worker around the queen's keys and limits.
    run_daemon(BrowserGuard(BearerAuth(app, token), own_names(config.host)), sock)
    close_devnull_files()
    raise SystemExit(app.state.worker.exit_code)


if __name__ == "__main__":
    main()
