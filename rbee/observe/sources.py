"""Facts about model sources, gathered while planning: each hf:// file is resolved on the Hub
with one HEAD (concurrently), so a missing repo or file, a gated model or a sha256 that differs
from the Hub's is a plan error, and the plan shows the sha256 it will fetch."""

from __future__ import annotations

import asyncio
import logging

from rbee.catalog.vendors.hf import HfVendor
from rbee.config.models import Model
from rbee.errors import RbeeError
from rbee.plan.observed import SourceFacts

__all__ = ["resolve_sources"]

_log = logging.getLogger(__name__)
# A plan waits for these: a Hub that does not answer soon is left to the hives to report.
_TIMEOUT_S = 5.0


async def resolve_sources(models: list[Model]) -> dict[str, SourceFacts]:
    """The hf:// sources of `models`, resolved; other schemes are left to the hives."""
    sources = sorted({m.source for m in models if m.source.startswith("hf://")})
    facts = await asyncio.gather(*(asyncio.to_thread(_resolve, s) for s in sources))
    return dict(zip(sources, facts, strict=True))


def _resolve(source: str) -> SourceFacts:
    try:
        resolved = HfVendor(timeout_s=_TIMEOUT_S).resolve(source)
    except RbeeError as exc:
        _log.info("source unresolved source=%s error=%s", source, exc.message)
        message = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
        return SourceFacts(error=message, transient=exc.transient)
    return SourceFacts(sha256=resolved.sha256, revision=resolved.revision, size_bytes=resolved.size)
