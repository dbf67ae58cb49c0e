"""Calls to workers, for the relay and the jobs alike: claim a slot, call, retry, release.

`Calls.attempt` is the one loop: claim a worker slot (the caller says how: the relay waits
until its request's deadline, a job in its priority's queue), call the worker, and when the
attempt fails before the worker's first byte pass that worker over and try another one after
a jittered backoff, `serving.attempts` workers in all, counting each retry; the slot goes back
to admission after each attempt. `call_worker` and `done` hold the connections (a keep-alive
pool, `upstream`), and the failure bookkeeping is here too: a worker whose connection failed
is forgotten until it beats again (and self-heal told, `on_gone`), one that answered badly or
late is passed over for a while, and a worker lost by the registry has its calls cut (`cut`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

from rbee.config.models import Serving
from rbee.queen.serve.admission import Admission
from rbee.queen.serve.metrics import Metrics
from rbee.queen.serve.registry import Registry
from rbee.queen.serve.upstream import (
    Connection,
    Pool,
    UpstreamClosed,
    UpstreamTimeout,
    header_block,
)
from rbee.queen.serve.worker import WorkerRecord

__all__ = ["BACKOFF_BASE_S", "BACKOFF_CAP_S", "AttemptFailed", "Calls", "Claim", "Exhausted"]

log = logging.getLogger(__name__)

#: Backoff between attempts: full jitter over an exponential base, capped.
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0

_T = TypeVar("_T")


def _backoff(attempt: int) -> float:
    """Seconds to wait before retry `attempt`: full jitter over an exponential base, capped."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))


class AttemptFailed(Exception):
    """An attempt at one worker failed before its first byte."""

    def __init__(self, reason: str, *, timeout: str | None = None, gone: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout  # connect | first_byte, when it was a timeout
        self.gone = gone  # the connection failed: the process is likely gone


class Exhausted(Exception):
    """Every attempt failed (or the claim gave up after one did); `last` is the last failure."""

    def __init__(self, last: AttemptFailed) -> None:
        super().__init__(last.reason)
        self.last = last


#: How an attempt gets its worker slot: given the workers tried so far and the last failure
#: (None before the first), a claimed slot, or None to give up with that failure.
Claim = Callable[[frozenset[str], AttemptFailed | None], Awaitable[WorkerRecord | None]]


class Calls:
    """Calls to workers over one connection pool (see the module's docstring)."""

    def __init__(
        self,
        registry: Registry,
        admission: Admission,
        metrics: Metrics,
        tls: ssl.SSLContext | None = None,
        on_gone: Callable[[str, str], None] = lambda worker_id, why: None,
    ) -> None:
        """`tls`: the queen's identity, for workers at https:// URLs (all that heartbeat);
        `on_gone`: told of a worker that seems gone (id, why)."""
        self._registry = registry
        self._admission = admission
        self._metrics = metrics
        self._on_gone = on_gone
        self._headers = header_block([("content-type", "application/json")])
        self._pool = Pool(tls)
        # Connections with a request in flight, by worker: a worker whose heartbeats stop
        # has them cut, rather than leaving its clients to wait out their timeouts.
        self._active: dict[str, set[Connection]] = {}

    async def attempt(
        self,
        model: str,
        serving: Serving,
        request_id: str,
        claim: Claim,
        call: Callable[[WorkerRecord], Awaitable[_T]],
    ) -> _T:
        """`call` on a slot from `claim`, tried again on other workers (see the module's
        docstring). Raises Exhausted when no attempt succeeded; what `claim` and `call` raise
        other than AttemptFailed goes through (the slot released)."""
        tried: set[str] = set()
        last: AttemptFailed | None = None
        for attempt in range(serving.attempts):
            if attempt:
                self._metrics.model(model).retries.inc()
                await asyncio.sleep(
                    random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
                )
            record = await claim(frozenset(tried), last)
            if record is None:
                break
            try:
                return await call(record)
            except AttemptFailed as failure:
                last = failure
                tried.add(record.beat.worker_id)
                self._attempt_failed(model, record, failure, request_id, attempt + 1)
            finally:
                self._admission.release(record)
        assert last is not None, "a claim gives up only after a failed attempt"
        raise Exhausted(last)

    def cut(self, worker_id: str, why: str) -> None:
        """Abort the calls in flight at `worker_id` (its heartbeats stopped): before their first
        byte they go to another worker, after it they end with an error."""
        for conn in self._active.pop(worker_id, ()):
            conn.abort(why)

    async def close(self) -> None:
        self._pool.close()

    async def call_worker(
        self, record: WorkerRecord, path: bytes, body: bytes, serving: Serving
    ) -> tuple[Connection, bytes]:
        """POST `body` to `path` of `record`'s worker: the connection once the answer's head
        (`conn.status`) and its first bytes are in. Give the connection back with `done`.
        Raises AttemptFailed when the attempt failed before the worker's first byte."""
        address, pool = record.address, self._pool
        conn = pool.idle(address.key)
        reused = conn is not None
        active = self._active.setdefault(record.beat.worker_id, set())
        try:
            while True:
                if conn is None:
                    try:
                        conn = await (
                            pool.connect_unix(address.socket, serving.connect_timeout)
                            if address.socket
                            else pool.connect(
                                address.host, address.port, serving.connect_timeout, record.tls_name
                            )
                        )
                    except TimeoutError:
                        raise AttemptFailed(
                            f"connect timed out after {serving.connect_timeout:g} s",
                            timeout="connect",
                        ) from None
                    except OSError as exc:
                        raise AttemptFailed(f"cannot connect: {exc}", gone=True) from None
                active.add(conn)
                try:
                    await conn.request(
                        address.prefix + path,
                        address.host_header,
                        body,
                        self._headers,
                        serving.first_byte_timeout,
                        serving.idle_timeout,
                    )
                    status = conn.status
                    if status >= 500 and status != 503:
                        raise AttemptFailed(f"the worker answered {status}")
                    if status == 503:  # draining or still loading: another may take it
                        raise AttemptFailed("the worker is not taking requests (503)")
                    first = await conn.read()
                    break
                except UpstreamTimeout as exc:
                    raise AttemptFailed(str(exc), timeout=exc.kind) from None
                except UpstreamClosed as exc:
                    if reused and not conn.got_body:
                        # A kept-alive connection the worker had closed: try a fresh one.
                        conn.close()
                        conn, reused = None, False
                        continue
                    # Reset or closed: the process most likely died; forgotten until it
                    # beats again.
                    message = f"connection lost before the first byte: {exc}"
                    raise AttemptFailed(message, gone=True) from None
            if not first and status < 400 and not conn.complete:
                raise AttemptFailed("the worker closed the connection without answering")
        except BaseException:
            if conn is not None:
                self.done(conn, record)
            raise
        return conn, first

    def done(self, conn: Connection, record: WorkerRecord) -> None:
        """The answer on `conn` is over: kept alive for the next request when it was read to
        its end, closed otherwise (which tells the worker to stop generating)."""
        active = self._active.get(record.beat.worker_id)
        if active is not None:
            active.discard(conn)
        if conn.complete:
            self._pool.release(conn)
        else:
            conn.close()

    def failed_mid_answer(
        self, model: str, record: WorkerRecord, exc: BaseException, request_id: str
    ) -> None:
        """The worker failed after its first byte (the answer cannot be tried elsewhere)."""
        reason = str(exc)
        if isinstance(exc, UpstreamTimeout):
            self._metrics.timeouts.labels(model, "idle").inc()
            self._registry.mark_unhealthy(record, reason)
        else:
            self._gone(record.beat.worker_id, reason)
        log.warning(
            "event=worker_failed_mid_answer request_id=%s worker_id=%s reason=%r",
            request_id,
            record.beat.worker_id,
            reason,
        )

    def _attempt_failed(
        self,
        model: str,
        record: WorkerRecord,
        failure: AttemptFailed,
        request_id: str,
        attempt: int,
    ) -> None:
        """Count a failed attempt and pass its worker over: forgotten until it beats again
        when the connection failed, marked unhealthy for a while otherwise."""
        if failure.timeout:
            self._metrics.timeouts.labels(model, failure.timeout).inc()
        if failure.gone:
            self._gone(record.beat.worker_id, failure.reason)
        else:
            self._registry.mark_unhealthy(record, failure.reason)
        log.warning(
            "event=worker_failed request_id=%s worker_id=%s attempt=%d reason=%r",
            request_id,
            record.beat.worker_id,
            attempt,
            failure.reason,
        )

    def _gone(self, worker_id: str, why: str) -> None:
        """A connection to the worker failed: routed around until its next heartbeat."""
        self._registry.drop(worker_id)
        self._on_gone(worker_id, why)
