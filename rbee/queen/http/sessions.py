"""The status page's sessions and its login throttle.

A browser that logs in gets a random session id in its cookie, never the key itself: a
stolen cookie expires (`TTL_S`), dies at logout, and dies with the key it was opened by
(each use checks the key again, so revoking the key closes its sessions). Wrong keys are
throttled per client address: `FREE_TRIES` failures in a row, then each try waits twice as
long as the last, up to `MAX_WAIT_S`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FREE_TRIES", "MAX_WAIT_S", "TTL_S", "Sessions"]

TTL_S = 12 * 3600.0
FREE_TRIES = 5
MAX_WAIT_S = 300.0
_MAX_SESSIONS = 10_000
_MAX_CLIENTS = 10_000


@dataclass
class _Session:
    secret: str
    expires: float


@dataclass
class _Failures:
    count: int
    last: float


class Sessions:
    """Session ids of the status page, and failed logins by client address (in memory: a
    restarted queen asks everyone to log in again)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open: dict[str, _Session] = {}
        self._failures: dict[str, _Failures] = {}

    def open(self, secret: str) -> str:
        """A new session for a credential that was just checked; its id."""
        now = self._clock()
        if len(self._open) >= _MAX_SESSIONS:
            self._open = {k: s for k, s in self._open.items() if s.expires > now}
            while len(self._open) >= _MAX_SESSIONS:  # the oldest go first
                del self._open[next(iter(self._open))]
        session_id = secrets.token_urlsafe(32)
        self._open[session_id] = _Session(secret, now + TTL_S)
        return session_id

    def secret(self, session_id: str) -> str | None:
        """The credential behind a live session id, or None (unknown, expired, closed)."""
        session = self._open.get(session_id)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._open[session_id]
            return None
        return session.secret

    def close(self, session_id: str) -> None:
        self._open.pop(session_id, None)

    def wait_s(self, client: str) -> float:
        """How long `client` must wait before its next login try (0: it may try now)."""
        failures = self._failures.get(client)
        if failures is None or failures.count < FREE_TRIES:
            return 0.0
        wait = min(MAX_WAIT_S, 2.0 ** (failures.count - FREE_TRIES))
        return max(0.0, failures.last + wait - self._clock())

    def failed(self, client: str) -> None:
        if len(self._failures) >= _MAX_CLIENTS and client not in self._failures:
            self._failures.pop(next(iter(self._failures)))
        failures = self._failures.setdefault(client, _Failures(0, 0.0))
        failures.count += 1
        failures.last = self._clock()

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
