"""Long operations (downloads, builds): run in a thread, watched over SSE. Kept in memory only."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from rbee.errors import NotFoundError, RbeeError
from rbee.wire import OperationEvent

__all__ = ["Operation", "Operations"]

_KEEP_FINISHED = 256
_PROGRESS_STEP = 0.01  # of the total: at most ~100 progress events per operation
_PROGRESS_STEP_UNKNOWN = 16 << 20  # bytes, when the total is unknown
_log = logging.getLogger(__name__)


class Operation:
    """One operation's event history; written from a worker thread, read from the event loop."""

    def __init__(self, operation_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.id = operation_id
        self._loop = loop
        self._lock = threading.Lock()
        self._events = [OperationEvent(operation_id=operation_id, state="running")]
        self._changed = asyncio.Event()

    @property
    def latest(self) -> OperationEvent:
        """The most recent event."""
        with self._lock:
            return self._events[-1]

    @property
    def finished(self) -> bool:
        """Whether the operation succeeded or failed."""
        return self.latest.state != "running"

    def progress(self, done: int, total: int | None) -> None:
        """Record progress (thread-safe), thinned to about one event per percent."""
        last = self.latest
        step = total * _PROGRESS_STEP if total else _PROGRESS_STEP_UNKNOWN
        if done != total and done - last.bytes_done < step:
            return
        update = {"bytes_done": done, "bytes_total": total, "message": None}
        self._publish(last.model_copy(update=update))

    def log(self, line: str) -> None:
        """Record a line of the operation's log (thread-safe), e.g. a build's output."""
        self._publish(self.latest.model_copy(update={"message": line}))

    def succeed(self, size: int) -> None:
        """Record the end: succeeded with `size` bytes in place."""
        self._publish(
            OperationEvent(
                operation_id=self.id, state="succeeded", bytes_done=size, bytes_total=size
            )
        )

    def fail(self, error: str) -> None:
        """Record the end: failed, with a message for the user."""
        update = {"state": "failed", "error": error, "message": None}
        self._publish(self.latest.model_copy(update=update))

    async def events(self) -> AsyncIterator[OperationEvent]:
        """Every event from the first, then new ones as they come, ending with the final one."""
        seen = 0
        while True:
            changed = self._changed  # taken before reading, so no wake-up is missed
            with self._lock:
                batch = self._events[seen:]
            seen += len(batch)
            for event in batch:
                yield event
                if event.state != "running":
                    return
            await changed.wait()

    def _publish(self, event: OperationEvent) -> None:
        with self._lock:
            if self._events[-1].state != "running":
                return
            self._events.append(event)
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class Operations:
    """The operations of this hive process, by id; finished ones are forgotten oldest first."""

    def __init__(self) -> None:
        self._by_id: OrderedDict[str, Operation] = OrderedDict()

    def get(self, operation_id: str) -> Operation:
        """The operation with this id; NotFoundError when unknown (or long forgotten)."""
        try:
            return self._by_id[operation_id]
        except KeyError:
            raise NotFoundError(f"no operation {operation_id!r}") from None

    def start(self, work: Callable[[Operation], int], label: str) -> Operation:
        """Run `work` in a thread; it reports progress and returns the final size in bytes."""
        operation = self._new()
        threading.Thread(
            target=self._run, args=(operation, work, label), name=f"op-{label}", daemon=True
        ).start()
        return operation

    def done(self, size: int) -> Operation:
        """An operation that has nothing to do: succeeded at once."""
        operation = self._new()
        operation.succeed(size)
        return operation

    def _new(self) -> Operation:
        operation = Operation(uuid.uuid4().hex, asyncio.get_running_loop())
        self._by_id[operation.id] = operation
        self._forget_old()
        return operation

    def _forget_old(self) -> None:
        finished = [op_id for op_id, op in self._by_id.items() if op.finished]
        for op_id in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            del self._by_id[op_id]

    @staticmethod
    def _run(operation: Operation, work: Callable[[Operation], int], label: str) -> None:
        started = time.monotonic()
        try:
            size = work(operation)
        except RbeeError as exc:
            _log.warning("operation failed id=%s what=%s error=%s", operation.id, label, exc)
            operation.fail(exc.message)
        except OSError as exc:
            _log.warning("operation failed id=%s what=%s error=%s", operation.id, label, exc)
            operation.fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        except Exception as exc:  # a thread must report, never die silently
            _log.exception("operation crashed id=%s what=%s", operation.id, label)
            operation.fail(f"internal error: {type(exc).__name__}: {exc}")
        else:
            elapsed = time.monotonic() - started
            _log.info("operation succeeded id=%s what=%s s=%.2f", operation.id, label, elapsed)
            operation.succeed(size)
