"""Artifact sources, one vendor per URL scheme: a vendor streams bytes into the catalog's sink."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Progress", "Sink", "Vendor"]

Progress = Callable[[int, int | None], None]
"""Called with (bytes done, bytes total or None when the size is unknown)."""

Sink = Callable[[bytes], object]
"""Where a vendor writes the artifact's bytes, in order."""


class Vendor(Protocol):
    """Fetches one source URL of its scheme."""

    def fetch(self, source: str, sink: Sink, progress: Progress) -> None:
        """Write the whole artifact at `source` into `sink`, reporting progress as it goes."""
        ...
