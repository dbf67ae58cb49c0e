"""A request's prefix chain: blocks of its prompt that the queen and a worker both compute from
the request's JSON, without the model, so the queen knows which worker holds a conversation's
start in its KV cache (`routing: prefix`).

A chat request's blocks are a head (the kind of request and its tools, which the template
writes before the messages) and then each message; a completion's are its prompt's pieces of
`BLOCK_CHARS` characters (the last may be shorter). The head counts for no characters of the
prompt: every request of the kind shares it. Each block's hash covers every block
before it too (a hash chain, as vLLM's and llm-d's prefix blocks), so one hash names one whole
prefix: a worker reports the hashes of what it holds (`Heartbeat.prefixes`) and the queen finds
the longest prefix of a new request that a worker holds.

Blocks are messages rather than tokens because the queen has no tokenizer: the same messages
render to the same tokens on a worker of the model, which is what "the same blocks" needs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

__all__ = ["BLOCK_CHARS", "EMPTY", "MAX_REPORTED", "Prefix", "prefix_of"]

#: Characters per block of a completion's prompt.
BLOCK_CHARS = 256
#: The most prefix hashes a heartbeat reports (and the queen keeps) per worker.
MAX_REPORTED = 4096


@dataclass(frozen=True)
class Prefix:
    """The chain of a request's blocks: `hashes[i]` names blocks 0..i, which end at character
    `ends[i]` of the request's prompt text."""

    hashes: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Characters over every block."""
        return self.ends[-1] if self.ends else 0

    def share(self, holds: Container[int]) -> float:
        """The share of the prompt's characters in the longest prefix `holds` has (0: none)."""
        return self.held(holds) / self.size if self.size else 0.0

    def held(self, holds: Container[int]) -> int:
        """Characters of the longest prefix whose hash is in `holds` (0: none)."""
        for index in range(len(self.hashes) - 1, -1, -1):
            if self.hashes[index] in holds:
                return self.ends[index]
        return 0


EMPTY = Prefix()


def prefix_of(body: dict[str, Any]) -> Prefix:
    """The prefix chain of an OpenAI chat or completion request's JSON body (EMPTY for any
    other request, a prompt of tokens or of several strings)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        head = _canonical(["chat", body.get("tools")])
        return _chain(head, [_canonical(message) for message in messages])
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt:
        pieces = [prompt[i : i + BLOCK_CHARS] for i in range(0, len(prompt), BLOCK_CHARS)]
        return _chain("completion", pieces)
    return EMPTY


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _chain(head: str, blocks: list[str]) -> Prefix:
    """The chain of `head` and then `blocks`. The head counts no characters: every request of
    its kind shares it, so a worker that holds only the head holds nothing of this prompt (and
    a request of no blocks has no prefix)."""
    if not blocks:
        return EMPTY
    hashes: list[int] = []
    ends: list[int] = []
    digest, end = b"", 0
    for index, block in enumerate([head, *blocks]):
        data = block.encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(digest + data, digest_size=8).digest()
        hashes.append(int.from_bytes(digest, "big") >> 1)  # fits JSON's and SQLite's int64
        end += len(block) if index else 0
        ends.append(end)
    return Prefix(tuple(hashes), tuple(ends))
