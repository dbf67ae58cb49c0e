"""The queen's access log: one line per inference request, with its request id and worker.

Written in batches: the hot path appends a tuple, and a task writes what gathered every tenth
of a second (short batches, so no long stall) in the daemons' `key=value` line format, with
one `write`, instead of a `logging` call that formats and writes on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

__all__ = ["AccessLog"]

_LOGGER = "rbee.queen.access"  # the name operators filter on, kept when the module moved


class AccessLog:
    """Lines of `event=request request_id=… model=… worker_id=… status=… ms=…`."""

    def __init__(self, service: str, stream: TextIO | None = None) -> None:
        self._prefix = f" level=INFO service={service} logger={_LOGGER} event=request "
        self._stream = stream
        self.enabled = logging.getLogger(_LOGGER).isEnabledFor(logging.INFO)
        self._lines: list[tuple[float, str, str, str, int, float]] = []

    def record(
        self, request_id: str, model: str, worker_id: str | None, status: int, ms: float
    ) -> None:
        if self.enabled:
            self._lines.append((time.time(), request_id, model, worker_id or "-", status, ms))

    def flush(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        out = []
        second, stamp = -1, ""
        for at, request_id, model, worker_id, status, ms in lines:
            if int(at) != second:  # the date is formatted once a second, not once a line
                second = int(at)
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            out.append(
                f"{stamp},{int(at * 1000) % 1000:03d}{self._prefix}request_id={request_id} "
                f"model={model} worker_id={worker_id} status={status} ms={ms:.1f}\n"
            )
        stream = self._stream or sys.stderr
        stream.write("".join(out))
        stream.flush()

    async def run(self, every_s: float = 0.1) -> None:
        """Flush every `every_s` until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(every_s)
                self.flush()
        finally:
            self.flush()
