"""The worker's RAM prompt cache: KV states of finished sequences, kept in host memory after
their slot was given to another conversation, so that the conversation's next turn restores
its history instead of reading it again (as llama-server's `--cache-ram`).

Only bookkeeping lives here (which states, their tokens, least recently used first out, the
byte budget); the decode loop (`rbee.worker.batch`) saves and restores the states with
llama.cpp's per-sequence state calls. A state is only ever restored into the context it was
saved from (this process's one context), and llama.cpp checks its shape as it restores: a
state it refuses is a miss, never a wrong answer.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["Entry", "RamCache", "common"]


@dataclass(eq=False)
class Entry:
    """One saved sequence: its tokens, its KV state as llama.cpp wrote it, and the prefix
    hashes of the request that filled it (`rbee.wire.prefix`)."""

    tokens: list[int]
    state: ctypes.Array[ctypes.c_uint8]
    prefixes: tuple[int, ...] = ()
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.state)


class RamCache:
    """Saved sequences under a byte budget, least recently used dropped first."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def newest_first(self) -> list[Entry]:
        """Entries, most recently used first."""
        return list(reversed(self._entries.values()))

    def best(self, prompt: list[int]) -> tuple[Entry | None, int]:
        """The entry sharing the longest start with `prompt`, and that length (None, 0: none
        shares a token)."""
        found, longest = None, 0
        for entry in self._entries.values():
            shared = common(entry.tokens, prompt)
            if shared > longest:
                found, longest = entry, shared
        return found, longest

    def covers(self, tokens: list[int]) -> bool:
        """Whether an entry holds `tokens` already (they start it): saving them adds nothing."""
        return any(common(entry.tokens, tokens) == len(tokens) for entry in self._entries.values())

    def used(self, entry: Entry) -> None:
        """`entry` was restored: it is the most recently used."""
        self._entries.move_to_end(id(entry))

    def put(self, entry: Entry) -> bool:
        """Keep `entry` (dropping the entries it extends, then the least recently used until the
        budget holds); False when it alone is over the budget."""
        if entry.size > self.budget:
            return False
        for key, older in list(self._entries.items()):
            if common(older.tokens, entry.tokens) == len(older.tokens):
                self._remove(key)
        self._entries[id(entry)] = entry
        self.bytes += entry.size
        while self.bytes > self.budget:
            self._remove(next(iter(self._entries)))
            self.evictions += 1
        return True

    def _remove(self, key: int) -> None:
        self.bytes -= self._entries.pop(key).size


def common(a: list[int], b: list[int]) -> int:
    """Length of the common start of two token lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
