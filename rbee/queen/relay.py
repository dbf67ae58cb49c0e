"""The inference hot path: pick a worker, claim a slot, relay its bytes unchanged (aiohttp).

No SQLite and no parsing of the streamed bytes here: DESIGN §7 measured httpx 8x slower than
aiohttp's client under concurrency, so the relay keeps one aiohttp session with pooled
connections to every worker.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from starlette.responses import JSONResponse, Response, StreamingResponse

from rbee.queen.registry import Registry, WorkerRecord
from rbee.wire import openai_error

__all__ = ["Relay"]

log = logging.getLogger(__name__)

_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class Relay:
    """Relays OpenAI requests to the least loaded worker of a model."""

    def __init__(
        self, registry: Registry, is_declared: Callable[[str], bool], token: str | None = None
    ) -> None:
        self._registry = registry
        self._headers = {"content-type": "application/json"}
        if token:
            # Workers off loopback (on network hives) check the cluster's token.
            self._headers["authorization"] = f"Bearer {token}"
        self._is_declared = is_declared
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, path: str, model: str, body: bytes) -> Response:
        """Send `body` to a worker of `model`; another worker is tried when one refuses."""
        assert self._session is not None, "Relay.start() was not awaited"
        tried: set[str] = set()
        while (record := self._registry.pick(model, frozenset(tried))) is not None:
            worker_id = record.beat.worker_id
            record.in_flight += 1
            try:
                upstream = await self._session.post(
                    record.beat.url + path,
                    data=body,
                    headers=self._headers,
                )
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                record.in_flight -= 1
                log.warning("event=worker_unreachable worker_id=%s error=%r", worker_id, exc)
                self._registry.drop(worker_id)
                tried.add(worker_id)
                continue
            if upstream.status == 503:
                # Draining or still loading: another worker may take it.
                upstream.release()
                record.in_flight -= 1
                tried.add(worker_id)
                continue
            return _stream(upstream, record)
        return self._no_worker(model, had_workers=bool(tried))

    def _no_worker(self, model: str, had_workers: bool) -> JSONResponse:
        known = had_workers or self._is_declared(model)
        if known or model in {rec.beat.model for rec in self._registry.live()}:
            return JSONResponse(
                openai_error(
                    f"no live worker serves model {model!r}; try again when one is idle",
                    "service_unavailable",
                    "no_worker",
                ),
                status_code=503,
                headers={"retry-after": "2"},
            )
        return JSONResponse(
            openai_error(
                f"the model {model!r} does not exist", "invalid_request_error", "model_not_found"
            ),
            status_code=404,
        )


def _stream(upstream: aiohttp.ClientResponse, record: WorkerRecord) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
        finally:
            upstream.release()
            record.in_flight -= 1

    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
    headers["x-rbee-worker"] = record.beat.worker_id
    return StreamingResponse(body(), status_code=upstream.status, headers=headers)
