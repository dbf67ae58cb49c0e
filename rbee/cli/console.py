"""The keeper's two consoles, stdout and stderr, made on first use, and how an expected
failure is printed on stderr.

Every command module prints through these. rich is imported when something is first
printed, so a command that prints nothing through them (`rbee validate` on success, `--help`)
never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from rich.console import Console

    from rbee.errors import RbeeError

__all__ = ["err", "out", "print_error"]


class _OnFirstUse:
    """Stands in for a rich Console until the first attribute is asked of it."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def _made(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._made(), name)

    # rich's Live holds its console in a `with` block: the protocol is looked up on the type.
    def __enter__(self) -> Console:
        return self._made().__enter__()

    def __exit__(self, *exc: object) -> None:
        self._made().__exit__(*exc)


out = cast("Console", _OnFirstUse())
err = cast("Console", _OnFirstUse(stderr=True))


def print_error(exc: RbeeError) -> None:
    """`exc` as the keeper shows an expected failure: a red line, and its hint dimmed. The
    message is printed as written: it may quote the YAML, where `[/red]` is no markup."""
    from rich.markup import escape

    err.print(f"[red]Error:[/red] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint: {escape(exc.hint)}[/dim]", highlight=False, soft_wrap=True)
