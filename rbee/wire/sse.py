"""Server-Sent Events framing, the one way every rbee stream writes its events.

Worker token streams, hive operation progress and the queen's apply progress all go out as
`data:` events; clients read them with httpx-sse (see `rbee.clients`).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DONE", "HEADERS", "MEDIA_TYPE", "PROMPT_TOKENS", "event", "json_event"]

MEDIA_TYPE = "text/event-stream"
# No caching, and no buffering by a proxy (nginx) between the stream and its reader.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: The header of a worker's stream that counts its prompt's tokens (the stream itself tells
#: them only at its end, when asked): the queen counts them against a key's tpm.
PROMPT_TOKENS = "x-rbee-prompt-tokens"
# OpenAI's end-of-stream marker.
DONE = b"data: [DONE]\n\n"


def event(data: str) -> bytes:
    """One event carrying `data`; each of its lines becomes a `data:` line, as the spec says."""
    lines = data.split("\n")
    return "".join(f"data: {line}\n" for line in lines).encode() + b"\n"


def json_event(value: Any) -> bytes:
    """One event carrying `value` as compact JSON (one line: JSON escapes its newlines)."""
    return b"data: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"
