"""The queen keeps the cluster's certificates fresh (`rbee.pki`): its own, checked every hour;
each worker's, seen in its heartbeats; each hive's, seen in the hive checks
(`HiveRegistry.check`). A certificate in the last third of its life gets a new one in place."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from rbee.clients import issue_identity, renew_worker
from rbee.errors import RbeeError
from rbee.pki import Identity, due
from rbee.wire import Heartbeat

__all__ = ["Renewals"]

log = logging.getLogger(__name__)


class Renewals:
    """Renews the queen's `identity` (for `hosts`) and its workers' identities."""

    def __init__(
        self, identity: Identity, hosts: list[str], clock: Callable[[], float] = time.time
    ) -> None:
        self._identity = identity
        self._hosts = hosts
        self._clock = clock
        self._renewing: dict[str, asyncio.Task[None]] = {}

    async def run(self, every_s: float = 3600.0) -> None:
        """Renew the queen's own certificate when due, checked every `every_s`, forever."""
        while True:
            self.own()
            await asyncio.sleep(every_s)

    def own(self) -> bool:
        """Renew the queen's certificate if it is due; whether it was."""
        if not due(self._identity.expires_at, self._clock()):
            return False
        self._identity.replace(issue_identity("queen", "queen", self._hosts))
        log.info("event=queen_identity_renewed expires_at=%.0f", self._identity.expires_at)
        return True

    def worker(self, beat: Heartbeat) -> None:
        """Renew the identity of the worker that sent `beat`, in the background, if due."""
        expires = beat.tls_expires_at
        if expires is None or not due(expires, self._clock()) or beat.worker_id in self._renewing:
            return
        task = asyncio.create_task(self._renew_worker(beat))
        self._renewing[beat.worker_id] = task
        task.add_done_callback(lambda _: self._renewing.pop(beat.worker_id, None))

    async def _renew_worker(self, beat: Heartbeat) -> None:
        try:
            await renew_worker(beat.url, beat.hive, beat.worker_id)
        except (RbeeError, OSError) as exc:
            log.warning("event=worker_identity_not_renewed worker=%s error=%r", beat.worker_id, exc)
        else:
            log.info("event=worker_identity_renewed worker=%s", beat.worker_id)
