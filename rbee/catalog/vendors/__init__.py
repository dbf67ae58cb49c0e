"""Artifact sources, one vendor per URL scheme.

A vendor first resolves a source (where its bytes are, how big, the checksum the source itself
publishes, the revision), then streams the bytes into the catalog's sink from the sink's
offset: a download that was cut off continues where it stopped.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Progress", "Resolved", "Sink", "Vendor"]

Progress = Callable[[int, int | None], None]
"""Called with (bytes done, bytes total or None when the size is unknown)."""


@dataclass(frozen=True)
class Resolved:
    """What a source is, known before any of its bytes are fetched."""

    url: str
    size: int | None = None
    sha256: str | None = field(default=None, metadata={"doc": "published by the source"})
    revision: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: How the server's certificate is checked: True (the system's CAs) or a context (a peer
    #: hive: the cluster CA, this hive's own certificate presented).
    verify: ssl.SSLContext | bool = True
    #: A model in parts (a split GGUF): each part, in order; `size` is their sum.
    parts: tuple[Resolved, ...] = ()


class Sink(Protocol):
    """Where a vendor writes the artifact's bytes, in order, after the `offset` already there."""

    @property
    def offset(self) -> int:
        """Bytes already in place (from an earlier, interrupted fetch)."""
        ...

    def write(self, chunk: bytes) -> None:
        """Append bytes."""
        ...

    def restart(self) -> None:
        """Drop what is there: the source cannot continue from `offset`."""
        ...


class Vendor(Protocol):
    """Fetches the sources of one URL scheme."""

    def resolve(self, source: str) -> Resolved:
        """Where `source`'s bytes are and what they are; NotFoundError and friends when it
        cannot be had."""
        ...

    def fetch(self, resolved: Resolved, sink: Sink, progress: Progress) -> None:
        """Write the bytes from `sink.offset` to the end into `sink`."""
        ...
