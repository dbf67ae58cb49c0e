"""The keeper's view of an apply: a live table on a terminal, plain lines in CI logs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rbee.errors import RbeeError
from rbee.wire import (
    ApplyEvent,
    DoneEvent,
    ErrorEvent,
    FailedEvent,
    LockEvent,
    PlanEvent,
    ProgressEvent,
    RetryEvent,
    SkippedEvent,
    SpawnedEvent,
    StartEvent,
    SummaryEvent,
)

__all__ = ["ApplyView"]

_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "retrying": "yellow",
    "done": "green",
    "failed": "red",
    "skipped": "yellow",
}
_SYMBOL = {"create": "+", "update": "~", "replace": "-/+", "delete": "-"}


@dataclass
class _Row:
    op: str
    state: str = "pending"
    detail: str = ""
    started: float | None = None
    elapsed: float | None = None


class ApplyView:
    """Folds the queen's apply events into per-resource rows and shows them.

    On a terminal the rows are a live table (state, bytes of downloads, elapsed time); elsewhere
    every change of state is one line, so CI logs read top to bottom.
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._live_mode = console.is_terminal
        self._rows: dict[str, _Row] = {}
        self._quarters: dict[str, int] = {}
        self._live: Live | None = None
        self.summary: SummaryEvent | None = None

    def __enter__(self) -> ApplyView:
        if self._live_mode:
            self._live = Live(self._render(), console=self._console, refresh_per_second=8)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)

    def handle(self, event: ApplyEvent) -> None:
        """Take one event from the queen's apply stream."""
        if isinstance(event, ErrorEvent):
            raise RbeeError(event.error, hint=event.hint)
        if isinstance(event, PlanEvent):
            self._on_plan(event.plan)
        elif isinstance(event, SummaryEvent):
            self.summary = event
        elif not isinstance(event, LockEvent):
            self._on_action(event)
        if self._live is not None:
            self._live.update(self._render())

    def _on_plan(self, plan: dict[str, Any]) -> None:
        for action in plan["actions"]:
            self._rows[action["address"]] = _Row(op=action["op"])
        if not self._live_mode:
            counts = plan["summary"]
            if plan["actions"]:
                self._console.print(
                    f"Plan: {counts['add']} to add, {counts['change']} to change, "
                    f"{counts['destroy']} to destroy."
                )
            else:
                self._console.print("No changes. The cluster matches the configuration.")

    def _on_action(
        self,
        event: StartEvent
        | ProgressEvent
        | SpawnedEvent
        | RetryEvent
        | DoneEvent
        | FailedEvent
        | SkippedEvent,
    ) -> None:
        address = event.address
        row = self._rows.setdefault(
            address, _Row(op=event.op if isinstance(event, StartEvent) else "?")
        )
        line: str | None = None
        match event:
            case StartEvent():
                row.state, row.started = "running", time.monotonic()
                line = f"{address}: {row.op}…"
            case ProgressEvent(message=str(message)):
                row.detail = message[-80:]
                line = f"{address}: {message}"
            case ProgressEvent(bytes_done=int(done), bytes_total=int(total)) if total:
                row.detail = f"{done / 1e6:.0f}/{total / 1e6:.0f} MB"
                quarter = 4 * done // total
                if quarter > self._quarters.get(address, 0):
                    self._quarters[address] = quarter
                    line = f"{address}: {25 * quarter}% of {total / 1e6:.0f} MB"
            case SpawnedEvent():
                row.detail = f"pid {event.pid}, waiting for idle"
            case RetryEvent():
                row.state = "retrying"
                row.detail = f"attempt {event.attempt} in {event.delay_s} s: {event.error}"
                line = f"{address}: retry {event.attempt} in {event.delay_s} s ({event.error})"
            case DoneEvent():
                row.state, row.elapsed, row.detail = "done", event.elapsed_s, ""
                line = f"{address}: done ({event.elapsed_s} s)"
            case FailedEvent():
                row.state, row.detail = "failed", event.error
                line = f"{address}: failed: {event.error}"
            case SkippedEvent():
                row.state = "skipped"
                row.detail = f"depends on {', '.join(event.because)}"
                line = f"{address}: skipped ({row.detail})"
        if line is not None and not self._live_mode:
            self._console.print(line, highlight=False, markup=False)

    def _render(self) -> Group:
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for column in ("", "resource", "state", "detail", "time"):
            table.add_column(column)
        now = time.monotonic()
        for address, row in self._rows.items():
            elapsed = row.elapsed
            if elapsed is None and row.started is not None:
                elapsed = now - row.started
            table.add_row(
                _SYMBOL.get(row.op, "?"),
                address,
                Text(row.state, style=_STYLE.get(row.state, "")),
                row.detail,
                f"{elapsed:.1f}s" if elapsed is not None else "",
            )
        return Group(table)
