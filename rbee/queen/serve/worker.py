"""A worker as the request path knows it: its record (heartbeat, slots in flight, health), its
address, and the routing `Policy` that picks among records.

Its own module so that the registry (which keeps records) and the scheduler (whose policies
choose among them) both import it and neither imports the other.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from rbee.pki import tls_name
from rbee.wire import Heartbeat
from rbee.wire.prefix import Prefix

__all__ = ["ROUTED_KEPT_S", "Address", "Policy", "WorkerRecord"]

#: How long a prefix sent to a worker counts as held without its heartbeat saying so: a beat
#: sent before the request arrived does not know it yet (beats come every 2 s).
ROUTED_KEPT_S = 5.0


@dataclass(frozen=True)
class Address:
    """Where a worker listens, parsed once from its heartbeat for the relay: its URL, and the
    Unix socket it serves too when it runs on the queen's machine (`socket`)."""

    host: str
    port: int
    prefix: bytes  # a path before /v1/…, usually empty
    host_header: bytes
    tls: bool
    #: The worker's socket, relayed to in clear: its URL is on loopback and the socket is
    #: this user's (the relay checks again who serves it when it connects).
    socket: str | None = None

    @classmethod
    def of(cls, url: str, socket: str | None = None) -> Address:
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        prefix, tls = parts.path.rstrip("/").encode(), parts.scheme == "https"
        local = socket if socket is not None and _on_this_machine(host, socket) else None
        return cls(host, port, prefix, parts.netloc.encode(), tls, local)

    @property
    def key(self) -> tuple[str, int]:
        """Its connections' key in the relay's pool."""
        return (self.socket, 0) if self.socket else (self.host, self.port)


def _on_this_machine(host: str, socket: str) -> bool:
    """Whether a worker at `host` serving `socket` is on this machine and this user's: its
    address is loopback, and `socket` is a socket this user owns."""
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False
    try:
        info = os.stat(socket)
    except OSError:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid()


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
    #: The prefix hashes its prompt cache holds (`rbee.wire.prefix`): its last heartbeat's,
    #: and those of the requests sent to it since (`routed`), which that beat may predate.
    prefixes: set[int] = field(init=False)
    routed: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.address = Address.of(self.beat.url, self.beat.socket)
        name = f"{self.beat.hive}/{self.beat.worker_id}"
        self.tls_name = tls_name("worker", name) if self.address.tls else None
        self.last_used = self.last_seen
        self.since = self.last_seen
        self.prefixes = set(self.beat.prefixes)

    def heard(self, beat: Heartbeat, now: float) -> None:
        """A new heartbeat of this process: what it holds, and what was sent to it lately."""
        self.beat = beat
        self.last_seen = now
        recent = now - ROUTED_KEPT_S
        self.routed = {h: at for h, at in self.routed.items() if at > recent}
        self.prefixes = set(beat.prefixes)
        self.prefixes.update(self.routed)

    def sent(self, prefix: Prefix, now: float) -> None:
        """A request with `prefix` was sent to it: once read, its prompt cache holds it."""
        for digest in prefix.hashes:
            self.routed[digest] = now
        self.prefixes.update(prefix.hashes)

    @property
    def load(self) -> float:
        """Fraction of slots in use, counting what the queen relays now and what the worker says."""
        busy = max(self.in_flight, self.beat.slots_busy)
        return busy / self.beat.slots_total


class Policy(Protocol):
    """A routing policy (`rbee.queen.serve.scheduler`): which of a model's workers with a free
    slot takes the next request, whose prompt begins with `prefix`."""

    def choose(self, candidates: Sequence[WorkerRecord], prefix: Prefix) -> WorkerRecord:
        """One of `candidates` (never empty)."""
        ...
