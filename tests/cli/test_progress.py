"""The apply view: a live table on a terminal, one line per state change in CI logs."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from rbee.cli.progress import ApplyView
from rbee.errors import RbeeError
from rbee.wire import apply_event

PLAN: dict[str, Any] = {
    "actions": [
        {"address": "model.local.m", "op": "create"},
        {"address": "worker.local.m[0]", "op": "create"},
    ],
    "summary": {"add": 2, "change": 0, "destroy": 0},
}
EVENTS: list[dict[str, Any]] = [
    {"event": "plan", "plan": PLAN},
    {"event": "start", "address": "model.local.m", "op": "create"},
    *(
        {"event": "progress", "address": "model.local.m", "bytes_done": d, "bytes_total": 100}
        for d in (10, 30, 60, 100)
    ),
    {"event": "done", "address": "model.local.m", "elapsed_s": 1.5},
    {"event": "start", "address": "worker.local.m[0]", "op": "create"},
    {"event": "failed", "address": "worker.local.m[0]", "error": "worker exited"},
    {"event": "summary", "ok": False, "done": ["model.local.m"], "failed": {}, "skipped": []},
]


def _run(terminal: bool) -> tuple[str, ApplyView]:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=100, color_system=None)
    with ApplyView(console) as view:
        for event in EVENTS:
            view.handle(apply_event(event))
    return buffer.getvalue(), view


def test_ci_log_has_one_line_per_state_change_and_quarter_progress() -> None:
    text, view = _run(terminal=False)
    assert text.splitlines() == [
        "Plan: 2 to add, 0 to change, 0 to destroy.",
        "model.local.m: create…",
        "model.local.m: 25% of 0 MB",
        "model.local.m: 50% of 0 MB",
        "model.local.m: 100% of 0 MB",
        "model.local.m: done (1.5 s)",
        "worker.local.m[0]: create…",
        "worker.local.m[0]: failed: worker exited",
    ]
    assert view.summary is not None and view.summary.ok is False


def test_terminal_shows_a_table_with_every_resource_state() -> None:
    text, _ = _run(terminal=True)
    final = text.split("resource")[-1]
    assert "model.local.m" in final and "done" in final and "1.5s" in final
    assert "worker.local.m[0]" in final and "failed" in final and "worker exited" in final


def test_an_error_event_is_an_rbee_error() -> None:
    view = ApplyView(Console(file=io.StringIO()))
    with pytest.raises(RbeeError, match="stale saved plan"):
        view.handle(apply_event({"event": "error", "error": "stale saved plan", "hint": "plan"}))
