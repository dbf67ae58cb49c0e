"""`llm-worker-rbee`: the worker process the hive spawns (one GGUF, N slots, one port).

The hive lists its workers by parsing these flags back from each process's command line:
keep their names.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence

from rbee.config.models import LOCAL_HOSTS
from rbee.daemon import (
    BearerAuth,
    bind,
    fail,
    require_token_off_loopback,
    run_daemon,
    setup_logging,
)
from rbee.errors import NotFoundError, RbeeError
from rbee.worker.app import SERVICE, WorkerConfig, create_app

__all__ = ["main", "parse_args"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=SERVICE,
        description="Serve one GGUF model over OpenAI-compatible HTTP with N parallel slots, "
        "heartbeating to the queen. Normally started by a hive, not by hand. "
        "The heartbeat token is read from RBEE_TOKEN.",
    )
    add = parser.add_argument
    add("--worker-id", required=True, help="this worker's id, as the queen knows it")
    add("--hive", required=True, help="name of the hive that spawned this worker")
    add("--model", required=True, help="model name, as in the cluster YAML")
    add("--model-path", required=True, help="path of the GGUF file")
    add("--worker-binary", required=True, help="worker binary name, as in the cluster YAML")
    add("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    add("--port", type=int, required=True, help="port to listen on (0 picks a free one)")
    add("--slots", type=_positive, default=1, help="parallel sequences (default: 1)")
    add("--ctx-size", type=_positive, default=4096, help="context tokens per slot (default: 4096)")
    add("--device", default="cpu", help="cpu, cuda:N or metal (default: cpu)")
    add("--queen-url", required=True, help="where to send heartbeats, e.g. http://127.0.0.1:7833")
    add("--chat-format", default=None, help="llama-cpp chat format when the GGUF names none")
    add("--threads", type=_positive, default=None, help="threads per slot (default: cores/slots)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> WorkerConfig:
    """The worker's command line as a WorkerConfig."""
    args = _parser().parse_args(argv)
    return WorkerConfig(
        worker_id=args.worker_id,
        hive=args.hive,
        model=args.model,
        model_path=args.model_path,
        worker_binary=args.worker_binary,
        host=args.host,
        port=args.port,
        queen_url=args.queen_url,
        slots=args.slots,
        ctx_size=args.ctx_size,
        device=args.device,
        chat_format=args.chat_format,
        threads=args.threads,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Bind the port, serve /health at once, load the model in the background, serve."""
    config = parse_args(argv)
    setup_logging(SERVICE)
    token = os.environ.get("RBEE_TOKEN") or None
    try:
        require_token_off_loopback(config.host, token, SERVICE)
        sock = bind(config.host, config.port)
        if not os.path.isfile(config.model_path):
            raise NotFoundError(
                f"model file {config.model_path} does not exist",
                hint="check --model-path",
            )
    except RbeeError as exc:
        fail(exc)
    port = int(sock.getsockname()[1])
    if port != config.port:
        config = dataclasses.replace(config, port=port)
    app = create_app(config, token)
    # On loopback the worker is reached only through this machine (the hive, a local queen);
    # anywhere else it demands the cluster token like every other rbee daemon.
    asgi = app if config.host in LOCAL_HOSTS else BearerAuth(app, token)
    run_daemon(asgi, sock)
    raise SystemExit(app.state.worker.exit_code)


if __name__ == "__main__":
    main()
