"""`rbee infer`: one chat completion streamed from the cluster through the queen."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from rbee.cli.options import DEFAULT_CONFIG, ConfigFile
from rbee.cli.reach import client_for
from rbee.errors import RbeeError

__all__ = ["infer"]


def infer(
    prompt: Annotated[str, typer.Argument(help="what to ask")],
    file: ConfigFile = DEFAULT_CONFIG,
    model: Annotated[
        str | None, typer.Option(help="model name (default: the first deployed)")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="most tokens to generate")] = 128,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.7,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object at the end")
    ] = False,
) -> None:
    """Stream an answer from the cluster through the queen."""
    import json

    from rbee.config.load import load_cluster
    from rbee.wire.chat import ChatMessage, ChatRequest

    cluster = load_cluster(file)
    name = model or (cluster.deployments[0].model if cluster.deployments else None)
    if name is None:
        raise RbeeError("no model to ask", hint="pass --model or declare a deployment")
    client = client_for(cluster.queen)
    request = ChatRequest(
        model=name,
        messages=[ChatMessage(role="user", content=prompt)],
        max_tokens=max_tokens,
        temperature=temperature,
    )
    started = time.monotonic()
    first: float | None = None
    parts: list[str] = []
    with client.chat_stream(request) as stream:
        for chunk in stream.chunks:
            text = chunk.text
            if not text:
                continue
            first = first if first is not None else time.monotonic()
            parts.append(text)
            if not as_json:
                sys.stdout.write(text)
                sys.stdout.flush()
        worker = stream.worker
    elapsed = time.monotonic() - started
    if as_json:
        result = {
            "model": name,
            "worker": worker,
            "content": "".join(parts),
            "chunks": len(parts),
            "time_to_first_token_s": round(first - started, 4) if first is not None else None,
            "elapsed_s": round(elapsed, 4),
        }
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write("\n")
