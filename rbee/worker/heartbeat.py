"""The worker's heartbeat to the queen: every 2 s, and at once whenever its state changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable

import httpx

from rbee.pki import tls_name
from rbee.wire import Heartbeat

__all__ = ["HEARTBEAT_INTERVAL_S", "HeartbeatSender"]

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 2.0
#: A slot taken or freed is told at most this often: a beat per request would cost a short
#: request (an embedding) a sixth of its time on two cores.
NUDGE_GAP_S = 0.5
_FAILURE_LOG_INTERVAL_S = 30.0


class HeartbeatSender:
    """POSTs `snapshot()` to `{queen_url}/v1/workers/heartbeat`; never raises out of `run()`."""

    def __init__(
        self,
        queen_url: str,
        token: str | None,
        snapshot: Callable[[], Heartbeat],
        *,
        tls: ssl.SSLContext | None = None,
        interval_s: float = HEARTBEAT_INTERVAL_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`tls`: the worker's identity, for the queen's cluster listener (an https:// URL),
        whose certificate must be the queen's (`tls_name`): nothing is sent to a server that
        is not; else `token` as a bearer."""
        self._url = queen_url.rstrip("/") + "/v1/workers/heartbeat"
        self._headers = {"Authorization": f"Bearer {token}"} if token and not tls else {}
        self._verify: ssl.SSLContext | bool = tls or True
        self._extensions = {"sni_hostname": tls_name("queen", "queen")} if tls else {}
        self._snapshot = snapshot
        self._interval_s = interval_s
        self._transport = transport
        self._poked = asyncio.Event()
        self._urgent = False
        self._failing_since: float | None = None
        self._last_failure_log = 0.0

    def poke(self) -> None:
        """Send the next heartbeat now rather than at the next tick (a lifecycle step)."""
        self._urgent = True
        self._poked.set()

    def nudge(self) -> None:
        """Send the next heartbeat soon (slots taken or freed), at most every `NUDGE_GAP_S`."""
        self._poked.set()

    async def run(self) -> None:
        """Beat until cancelled."""
        timeout = httpx.Timeout(self._interval_s, connect=self._interval_s)
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(
            timeout=timeout, transport=self._transport, verify=self._verify
        ) as client:
            while True:
                self._poked.clear()
                self._urgent = False
                await self.send(client)
                sent = loop.time()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), self._interval_s)
                    gap = sent + NUDGE_GAP_S - loop.time()
                    if not self._urgent and gap > 0:
                        with contextlib.suppress(TimeoutError):  # a poke cuts the gap short
                            await asyncio.wait_for(self._until_urgent(), gap)

    async def _until_urgent(self) -> None:
        while not self._urgent:
            self._poked.clear()
            await self._poked.wait()

    async def send(self, client: httpx.AsyncClient) -> bool:
        """One heartbeat; a failure is logged (at most every 30 s) and reported as False."""
        beat = self._snapshot()
        try:
            response = await client.post(
                self._url,
                json=beat.model_dump(mode="json"),
                headers=self._headers,
                extensions=self._extensions,
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self._failed(exc)
            return False
        if self._failing_since is not None:
            log.info(
                "heartbeat reaches the queen again url=%s after_s=%.1f",
                self._url,
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
        return True

    def _failed(self, exc: httpx.HTTPError) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_failure_log >= _FAILURE_LOG_INTERVAL_S:
            self._last_failure_log = now
            log.warning(
                "heartbeat failed url=%s error=%s",
                self._url,
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            )
