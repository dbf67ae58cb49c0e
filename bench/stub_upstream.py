"""Stub OpenAI upstreams for bench/router.py.

1. A slow-streaming one for the long-stream test: every POST /v1/chat/completions is answered
   with CHUNKS `chat.completion.chunk` SSE events INTERVAL seconds apart, then `data: [DONE]`,
   whatever the request asked for.

   Usage: .venv/bin/python bench/stub_upstream.py --port 8000 [--chunks 50] [--interval 0.1]

   The chunks go out on a fixed schedule (start + i * interval), so one late chunk does not
   push the others back: the gaps a client sees are the stalls of whatever sits between the two.

2. `app`, a fast one for router.py's `--stub python`: a raw ASGI app (no framework) that answers
   every POST /v1/chat/completions with the fixed body in $RBEE_STUB_BODY (content type
   $RBEE_STUB_CONTENT_TYPE), served by uvicorn with httptools and uvloop:

   RBEE_STUB_BODY='{...}' .venv/bin/python -m uvicorn stub_upstream:app --app-dir bench \
       --http httptools --loop uvloop --no-access-log --log-level warning --no-proxy-headers

   GET /stub_status answers `{"connections": N}`: the connections that have sent it a request
   (one that never does is not seen). ASGI has no connection events, so it peeks at uvicorn:
   the `receive` it hands the app is a method of its per-request cycle, which holds the
   connection's transport; a transport not seen before is a new connection. (Distinct client
   (address, port) pairs would undercount: on loopback the kernel soon reuses a closed
   connection's port.) N is null where there is no such transport.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from aiohttp import web


def chunk(index: int, last: bool) -> bytes:
    """One SSE event holding a chat.completion.chunk (one token, 'tok<index> ')."""
    body = {
        "id": "chatcmpl-slowstub",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "stub",
        "choices": [
            {
                "index": 0,
                "delta": {} if last else {"content": f"tok{index} "},
                "finish_reason": "stop" if last else None,
            }
        ],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def make_app(chunks: int, interval: float) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index in range(chunks):
            await response.write(chunk(index, last=index == chunks - 1))
            await asyncio.sleep(max(0.0, start + (index + 1) * interval - loop.time()))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/health", health)
    return app


Message = dict[str, Any]


class FixedStub:
    """Raw ASGI app: POST /v1/chat/completions → 200 with `body`; GET /health, /stub_status."""

    def __init__(self, content_type: str, body: bytes) -> None:
        self.content_type = content_type.encode()
        self.body = body
        # Held, not weakly: uvloop's TLS transports take no weak reference. A run opens a few
        # hundred connections at most.
        self.transports: set[int] = set()
        self._held: list[object] = []
        self.connections: int | None = 0

    async def __call__(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        self._count(receive)
        request = (scope["method"], scope["path"])
        if request == ("POST", "/v1/chat/completions"):
            while (await receive()).get("more_body"):  # drain the request body
                pass
            await self._answer(send, self.content_type, self.body)
        elif request == ("GET", "/health"):
            await self._answer(send, b"application/json", b'{"status":"ok"}')
        elif request == ("GET", "/stub_status"):
            status = json.dumps({"connections": self.connections}).encode()
            await self._answer(send, b"application/json", status)
        else:
            await self._answer(send, b"text/plain", b"not found", status=404)

    def _count(self, receive: object) -> None:
        """Counts the connection `receive` belongs to, the first time it is seen."""
        transport: object = getattr(getattr(receive, "__self__", None), "transport", None)
        if transport is None:
            self.connections = None
        elif self.connections is not None and id(transport) not in self.transports:
            self.transports.add(id(transport))
            self._held.append(transport)
            self.connections += 1

    @staticmethod
    async def _answer(
        send: Callable[[Message], Awaitable[None]], ctype: bytes, body: bytes, status: int = 200
    ) -> None:
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


app = FixedStub(
    os.environ.get("RBEE_STUB_CONTENT_TYPE", "application/json"),
    os.environ.get("RBEE_STUB_BODY", "{}").encode(),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="A slow-streaming OpenAI upstream (bench/router.py --streams)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between chunks")
    args = parser.parse_args()
    web.run_app(
        make_app(args.chunks, args.interval),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=4096,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
