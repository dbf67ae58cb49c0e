"""A worker as the request path knows it: its record (heartbeat, slots in flight, health), its
address, and the routing `Policy` that picks among records.

Its own module so that the registry (which keeps records) and the scheduler (whose policies
choose among them) both import it and neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from rbee.pki import tls_name
from rbee.wire import Heartbeat

__all__ = ["Address", "Policy", "WorkerRecord"]


@dataclass(frozen=True)
class Address:
    """Where a worker listens, parsed once from its heartbeat's URL for the relay."""

    host: str
    port: int
    prefix: bytes  # a path before /v1/…, usually empty
    host_header: bytes
    tls: bool

    @classmethod
    def of(cls, url: str) -> Address:
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        prefix, tls = parts.path.rstrip("/").encode(), parts.scheme == "https"
        return cls(host, port, prefix, parts.netloc.encode(), tls)


@dataclass(eq=False)
class WorkerRecord:
    beat: Heartbeat
    last_seen: float
    in_flight: int = 0
    picked_at: float = 0.0
    unhealthy_until: float = 0.0
    unhealthy_reason: str | None = None
    #: Retired by the queen: no new request goes to it; it is stopped once none is in flight.
    draining: bool = False
    #: When its last request ended (or it registered): idle eviction stops the least recent.
    last_used: float = field(init=False)
    address: Address = field(init=False)
    #: The TLS server name of its certificate (`rbee.pki.tls_name`); None for plain HTTP.
    tls_name: str | None = field(init=False)
    #: The registry's clock at this process's first heartbeat (the status page's uptime).
    since: float = field(init=False)

    def __post_init__(self) -> None:
        self.address = Address.of(self.beat.url)
        name = f"{self.beat.hive}/{self.beat.worker_id}"
        self.tls_name = tls_name("worker", name) if self.address.tls else None
        self.last_used = self.last_seen
        self.since = self.last_seen

    @property
    def load(self) -> float:
        """Fraction of slots in use, counting what the queen relays now and what the worker says."""
        busy = max(self.in_flight, self.beat.slots_busy)
        return busy / self.beat.slots_total


class Policy(Protocol):
    """A routing policy (`rbee.queen.serve.scheduler`): which of a model's workers with a free
    slot takes the next request."""

    def choose(self, candidates: Sequence[WorkerRecord]) -> WorkerRecord:
        """One of `candidates` (never empty)."""
        ...
