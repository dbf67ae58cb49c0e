"""One exception hierarchy: every expected failure carries a user message and a hint."""

from __future__ import annotations

from typing import Literal

__all__ = [
    "ConfigError",
    "NotFoundError",
    "PortInUseError",
    "RbeeError",
    "RemoteError",
    "SshErrorKind",
    "UnavailableError",
]

#: How an SSH action on a network hive failed; each kind has its own hint (rbee.remote.connect).
SshErrorKind = Literal[
    "host_key_unknown",
    "host_key_changed",
    "auth_failed",
    "connection_refused",
    "timeout",
    "unreachable",
    "command_failed",
]


class RbeeError(Exception):
    """An expected failure: the CLI prints `message` (and `hint`) as one red line, no traceback."""

    exit_code = 1
    #: Whether trying the same thing again later may succeed (the executor retries those).
    transient: bool = False

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

    transient = True


class RemoteError(RbeeError):
    """A queen or hive answered with an error; `status` is its HTTP status when known."""

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None) -> None:
        super().__init__(message, hint)
        self.status = status
        # A 5xx means the server failed and the same request may succeed; a 4xx will not.
        self.transient = status is not None and status >= 500


class PortInUseError(RbeeError):
    """A daemon could not bind its port."""
