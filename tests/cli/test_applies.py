"""Pure parts of `rbee history` / `rbee force-unlock` (the commands run for real in e2e)."""

from __future__ import annotations

import pytest
import typer

from rbee.cli.applies import register
from rbee.cli.options import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("30", 30.0), ("2m", 120.0), ("500ms", 0.5), ("1h", 3600.0), ("1.5s", 1.5)],
)
def test_lock_timeout_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1s", "30d", "1 2s"])
def test_a_bad_duration_says_what_is_expected(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="is not a duration like 30s"):
        parse_duration(text)


def test_register_adds_both_commands_once() -> None:
    app = typer.Typer()
    register(app)
    register(app)
    assert sorted(str(c.name) for c in app.registered_commands) == ["force-unlock", "history"]


def test_the_default_lock_timeout_passes_through_the_parser() -> None:
    assert parse_duration(0.0) == 0.0
