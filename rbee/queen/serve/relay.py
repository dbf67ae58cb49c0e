"""The inference hot path: admit, claim a worker slot, relay the worker's bytes.

A raw ASGI handler, no framework, and a lean keep-alive client (`upstream`): Starlette's
request and response objects and aiohttp's client cost more than the relay itself
(bench/router.py). No SQLite here, and the streamed bytes are passed on as they come, cut only
at SSE event boundaries so that a failure never leaves half an event behind.

Failures, by when they happen:
- before the worker's first byte (connect error, reset, 5xx, timeout): the worker is passed
  over for a while and the request tries another one, after a jittered backoff, up to
  `serving.attempts` workers (`Calls.attempt`, the loop jobs use too); then a 502 (or 504 on a
  timeout) in OpenAI's error shape;
- after it: a streaming client gets one final SSE event in OpenAI's error shape and a clean
  close (never text twice); a non-streaming client gets a 502.
A client that disconnects cancels its request: the connection to the worker is closed, which
is how the worker learns to stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from rbee.config.models import Serving
from rbee.daemon import Message, Receive, Scope, Send, send_error
from rbee.queen.serve.access import AccessLog
from rbee.queen.serve.admission import Admission, NoWorker, QueueFull, QueueTimeout
from rbee.queen.serve.calls import AttemptFailed, Calls, Exhausted
from rbee.queen.serve.metrics import Metrics
from rbee.queen.serve.registry import Registry
from rbee.queen.serve.upstream import Connection, UpstreamClosed, UpstreamTimeout
from rbee.queen.serve.worker import WorkerRecord
from rbee.wire import QueenArgs, json_object, openai_error, sse
from rbee.wire.prefix import EMPTY, prefix_of

__all__ = ["Caller", "Relay"]

log = logging.getLogger(__name__)


#: A request still running after this long starts watching for its client's disconnect.
WATCH_AFTER_S = 0.05
_SSE_END = b"\n\n"
# An embeddings or rerank answer's usage has no completion tokens: its input is what it costs.
# A Responses answer's counts are `input_tokens` and `output_tokens`.
_USAGE = re.compile(
    rb'"(?:prompt|input)_tokens":\s*(\d+)(?:.*?"(?:completion|output)_tokens":\s*(\d+))?', re.S
)
_RELAYED_HEADERS = frozenset({b"content-type", b"cache-control", b"x-accel-buffering"})
_PROMPT_TOKENS = sse.PROMPT_TOKENS.encode()


def _prompt_tokens(headers: list[tuple[bytes, bytes]]) -> int:
    """The prompt's tokens a worker's stream announces in its head (0 when it does not)."""
    for name, value in headers:
        if name == _PROMPT_TOKENS and value.isdigit():
            return int(value)
    return 0


class Caller(Protocol):
    """Who sent a request, as far as the relay cares: their rate limits (an API key's
    `rbee.queen.http.auth.Principal`)."""

    def over_limit(self) -> tuple[str, int] | None:
        """None when the request may go (it is counted); else the 429's message and
        `Retry-After` seconds."""
        ...

    def spend(self, tokens: int) -> None:
        """Take the tokens an answer used from the caller's limit."""
        ...


class _Answered(Exception):
    """The request was answered before reaching a worker (a refusal); `status` says how."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Relay:
    """Relays OpenAI requests to a free worker of their model."""

    def __init__(
        self,
        registry: Registry,
        admission: Admission,
        calls: Calls,
        metrics: Metrics,
        is_declared: Callable[[str], bool],
    ) -> None:
        """`is_declared`: whether the last apply declares a model (a 503 rather than a 404)."""
        self._registry = registry
        self._admission = admission
        self._calls = calls
        self._metrics = metrics
        self._is_declared = is_declared
        self.access = AccessLog(QueenArgs.SCRIPT)

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
        caller: Caller,
        request_id: bytes,
    ) -> None:
        """Answer one inference request whose `body` has been read."""
        try:
            parsed = json_object(body)
        except ValueError as exc:
            await send_error(send, 400, str(exc), "invalid_request_error")
            return
        model = parsed.get("model")
        if not isinstance(model, str) or not model:
            await send_error(send, 400, "the request names no model", "invalid_request_error")
            return
        if (over := caller.over_limit()) is not None:
            message, retry_after = over
            self._metrics.rejected.labels("rate_limit").inc()
            await send_error(
                send,
                429,
                message,
                "rate_limit_error",
                "rate_limit_exceeded",
                [(b"retry-after", str(retry_after).encode())],
            )
            return
        call = _Call(self, scope, receive, send, body, parsed, model, request_id)
        started = time.monotonic()
        status = await call.run()
        # A model that does not exist gets no series of its own: names are the client's to
        # invent, and every new label value would be a series kept forever.
        label = "(unknown)" if call.unknown_model else model
        self._metrics.answered(label, status)
        if call.tokens:
            self._metrics.model(model).tokens_out.inc(call.tokens[1])
            caller.spend(call.tokens[0] + call.tokens[1])
        self.access.record(
            request_id.decode(),
            label if label.isprintable() and " " not in label else repr(label),
            call.worker,
            status,
            (time.monotonic() - started) * 1000,
        )


class _Call:
    """One request on its way through the relay."""

    def __init__(
        self,
        relay: Relay,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
        parsed: dict[str, Any],
        model: str,
        request_id: bytes,
    ) -> None:
        self.relay = relay
        self.scope = scope
        self.receive = receive
        self.send = send
        self.body = body
        self.model = model
        self.stream = parsed.get("stream") is True
        self.request_id = request_id
        self.serving: Serving = relay._admission.serving(model)
        self.prefix = prefix_of(parsed) if self.serving.routing == "prefix" else EMPTY
        self.worker: str | None = None
        self.tokens: tuple[int, int] | None = None  # (prompt, completion)
        self.started = False  # whether the response has begun towards the client
        self.unknown_model = False

    async def run(self) -> int:
        """Serve the call; the HTTP status the client got (499 when it left)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        gone = False
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            nonlocal gone
            while (await self.receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        def start_watching() -> None:
            nonlocal watcher
            watcher = loop.create_task(watch())

        # Most answers take less than WATCH_AFTER_S: they never pay for a watching task.
        later = loop.call_later(WATCH_AFTER_S, start_watching)
        try:
            return await self._serve(loop)
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
            return 499
        finally:
            later.cancel()
            if watcher is not None:
                watcher.cancel()

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> int:
        relay, serving, metrics = self.relay, self.serving, self.relay._metrics
        arrived = loop.time()
        deadline = arrived + serving.queue_timeout

        async def claim(tried: frozenset[str], last: AttemptFailed | None) -> WorkerRecord | None:
            try:
                queued = loop.time()
                record = await relay._admission.acquire(
                    self.model, serving, max(deadline, loop.time()), tried, prefix=self.prefix
                )
            except NoWorker:
                if last is not None and not last.gone:
                    return None
                raise _Answered(await self._no_worker(had_workers=bool(tried))) from None
            except QueueFull:
                metrics.rejected.labels("queue_full").inc()
                raise _Answered(
                    await self._refuse(
                        503,
                        f"the queue of model {self.model!r} is full ({serving.max_queue} "
                        "waiting); retry later",
                        "service_unavailable",
                        "queue_full",
                        retry_after=2,
                    )
                ) from None
            except QueueTimeout:
                metrics.timeouts.labels(self.model, "queue").inc()
                if last is not None:
                    return None
                raise _Answered(
                    await self._refuse(
                        504,
                        f"no worker of model {self.model!r} had a free slot within "
                        f"{serving.queue_timeout:g} s",
                        "timeout",
                        "queue_timeout",
                    )
                ) from None
            metrics.model(self.model).queue_seconds.observe(loop.time() - queued)
            self.worker = record.beat.worker_id
            return record

        async def call(record: WorkerRecord) -> int:
            return await self._relay(record, arrived, loop)

        try:
            return await relay._calls.attempt(
                self.model, serving, self.request_id.decode(), claim, call
            )
        except _Answered as answered:
            return answered.status
        except Exhausted as exhausted:
            last = exhausted.last
        if last.timeout:
            return await self._refuse(
                504, f"no worker answered in time: {last.reason}", "timeout", "worker_timeout"
            )
        return await self._refuse(
            502, f"no worker could serve the request: {last.reason}", "bad_gateway", "worker_failed"
        )

    async def _relay(
        self, record: WorkerRecord, arrived: float, loop: asyncio.AbstractEventLoop
    ) -> int:
        """Send the request to `record`'s worker and its answer to the client."""
        relay = self.relay
        path = self.scope["path"].encode()
        conn, first = await relay._calls.call_worker(record, path, self.body, self.serving)
        try:
            relay._metrics.model(self.model).ttft_seconds.observe(loop.time() - arrived)
            if self.stream and conn.status == 200:
                return await self._pass_stream(conn, first, record)
            return await self._pass_whole(conn, first, record)
        finally:
            relay._calls.done(conn, record)

    def _start(self, status: int, conn: Connection, worker_id: str) -> Message:
        headers = [(name, value) for name, value in conn.headers if name in _RELAYED_HEADERS]
        headers.append((b"x-request-id", self.request_id))
        headers.append((b"x-rbee-worker", worker_id.encode()))
        return {"type": "http.response.start", "status": status, "headers": headers}

    async def _pass_whole(self, conn: Connection, first: bytes, record: WorkerRecord) -> int:
        """A non-streamed answer: read it all, then send it with its length."""
        parts = [first]
        try:
            while chunk := await conn.read():
                parts.append(chunk)
        except (UpstreamTimeout, UpstreamClosed) as exc:
            self._failed_after_first_byte(record, exc)
            return await self._refuse(
                502, f"the worker failed while answering: {exc}", "bad_gateway", "worker_failed"
            )
        body = first if len(parts) == 1 else b"".join(parts)
        status = conn.status
        if status == 200 and (usage := _usage_of(body)) is not None:
            self.tokens = usage
        start = self._start(status, conn, record.beat.worker_id)
        start["headers"].append((b"content-length", b"%d" % len(body)))
        self.started = True
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body})
        return status

    async def _pass_stream(self, conn: Connection, first: bytes, record: WorkerRecord) -> int:
        """A streamed answer: whole SSE events, passed on as they come."""
        send = self.send
        self.started = True
        await send(self._start(200, conn, record.beat.worker_id))
        # llama-cpp-python streams a chunk per token, plus a finish chunk and `[DONE]`, and
        # for chat a role chunk first. The count is kept as chunks go out: a client that
        # leaves once it has read `[DONE]` cancels this call during the last send, and its
        # tokens must have been counted by then.
        # A Responses stream opens with 4 events before its first text (it ends with its usage).
        path = self.scope["path"]
        extra = 3 if path.endswith("/chat/completions") else 4 if path == "/v1/responses" else 2
        prompt = _prompt_tokens(conn.headers)
        events = 0
        usage: tuple[int, int] | None = None  # exact, when the stream ends with its usage
        pending = b""
        chunk = first
        tail = b""  # what goes out with the end of the response
        try:
            while chunk:
                if pending:
                    chunk = pending + chunk
                    pending = b""
                if conn.drained:  # the whole rest of the answer is in hand
                    tail = chunk
                    break
                if not chunk.endswith(_SSE_END):  # hold back the part after the last event
                    end = chunk.rfind(_SSE_END)
                    cut = end + 2 if end >= 0 else 0
                    chunk, pending = chunk[:cut], chunk[cut:]
                if chunk:
                    events += chunk.count(b"data:")
                    usage = usage or _usage_of(chunk)
                    self.tokens = usage or (prompt, max(0, events - extra))
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = await conn.read()
            else:
                tail = pending  # a last event without its blank line
            events += tail.count(b"data:")
            usage = usage or _usage_of(tail)
            self.tokens = usage or (prompt, max(0, events - extra))
        except (UpstreamTimeout, UpstreamClosed) as exc:
            self._failed_after_first_byte(record, exc)
            error = openai_error(
                f"the worker failed mid-answer: {exc}", "bad_gateway", "worker_failed"
            )
            tail = b"data: " + json.dumps(error).encode() + b"\n\n"
        # The end goes in the same write as the last bytes: a short stream is one body write.
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        return 200

    def _failed_after_first_byte(self, record: WorkerRecord, exc: BaseException) -> None:
        self.relay._calls.failed_mid_answer(self.model, record, exc, self.request_id.decode())

    async def _no_worker(self, had_workers: bool) -> int:
        relay = self.relay
        if had_workers or relay._is_declared(self.model) or relay._registry.serves(self.model):
            return await self._refuse(
                503,
                f"no live worker serves model {self.model!r}; try again when one is up",
                "service_unavailable",
                "no_worker",
                retry_after=2,
            )
        self.unknown_model = True
        return await self._refuse(
            404,
            f"the model {self.model!r} does not exist",
            "invalid_request_error",
            "model_not_found",
        )

    async def _refuse(
        self, status: int, message: str, type_: str, code: str, retry_after: int | None = None
    ) -> int:
        headers = [(b"x-request-id", self.request_id)]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        await send_error(self.send, status, message, type_, code, headers)
        return status


def _usage_of(data: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the usage in `data`: a whole answer's (an embeddings
    or rerank answer's has prompt tokens alone), or a stream's last chunk
    (`stream_options.include_usage`), which then counts instead of one per chunk."""
    last = data.rfind(b'"usage"')
    if last < 0:
        return None
    # From the last usage on: a Responses object repeats the request (its tools' schemas may
    # hold anything) before its usage, which it puts last.
    found = _USAGE.search(data, last)
    return (int(found[1]), int(found[2] or 0)) if found else None
