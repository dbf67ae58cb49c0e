"""One exception hierarchy: every expected failure carries a user message and a hint."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "NotFoundError",
    "PortInUseError",
    "RbeeError",
    "RemoteError",
    "UnavailableError",
]


class RbeeError(Exception):
    """An expected failure: the CLI prints `message` (and `hint`) as one red line, no traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(RbeeError):
    """The cluster YAML is invalid; `message` holds one `file:line:col: field: message` per line."""


class NotFoundError(RbeeError):
    """A named thing (model, worker, hive, file) does not exist."""


class UnavailableError(RbeeError):
    """A process rbee needs (queen, hive, worker) cannot be reached or has no capacity."""


class RemoteError(RbeeError):
    """A queen or hive answered with an error."""


class PortInUseError(RbeeError):
    """A daemon could not bind its port."""
