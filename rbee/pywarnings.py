"""Python's warnings in rbee's programs: to the log at debug level, never to the terminal.

A dependency's `DeprecationWarning` (cryptography's "DSA is deprecated" when asyncssh is
imported, say) is for rbee's developers, not its users: printed on stderr it would bury a
daemon's one-line start-up error and every CLI answer. rbee speaks to users through its own
errors and log lines only. Each program's package (`rbee.cli`, `rbee.queen`, `rbee.hive`,
`rbee.worker`) calls `log_python_warnings()` before it imports anything else, so warnings
raised while dependencies are imported are caught too. Whether a warning is raised at all is
still Python's choice (`-W`, `PYTHONWARNINGS`); this only decides where it goes.
"""

from __future__ import annotations

import logging
import warnings
from typing import TextIO

__all__ = ["log_python_warnings"]

_log = logging.getLogger("py.warnings")


def log_python_warnings() -> None:
    """Send every Python warning of this process to the `py.warnings` logger at debug level."""
    warnings.showwarning = _to_log


def _to_log(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # Before logging is set up a debug record goes nowhere: logging's last resort handler
    # prints warnings and errors only.
    _log.debug("%s:%d: %s: %s", filename, lineno, category.__name__, message)
