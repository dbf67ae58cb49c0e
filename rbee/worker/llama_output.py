"""What llama.cpp and llama-cpp-python would write on the worker's stderr, kept off it.

llama.cpp's log lines go to the worker's log (logger `llama.cpp`): its chatter (buffer sizes,
a context freed) at debug level, its warnings and errors at theirs; llama-cpp-python's own
callback would print them all. And the two /dev/null files llama-cpp-python opens at import
and never closes are closed at exit, before Python's last collection would report them.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import llama_cpp
from llama_cpp import _utils

__all__ = ["close_devnull_files", "forward_llama_logs"]

_log = logging.getLogger("llama.cpp")
# ggml_log_level (ggml.h; llama-cpp-python's own table predates its reordering): 0 none,
# 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line.
_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_CONTINUE = 5
_lock = threading.Lock()
_pending: list[str] = []
_pending_level = logging.DEBUG


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _pending_level
    try:  # an exception must not cross back into C
        with _lock:
            if level != _CONTINUE and not _pending:
                _pending_level = _LEVELS.get(level, logging.DEBUG)
            _pending.append(text.decode("utf-8", "replace"))
            if not _pending[-1].endswith("\n"):
                return  # llama.cpp writes a line in pieces
            line = "".join(_pending).rstrip()
            _pending.clear()
        if line:
            _log.log(_pending_level, "%s", line)
    except BaseException:  # even at interpreter exit: never raise into C
        pass


def forward_llama_logs() -> None:
    """Route llama.cpp's logging of this process through `_forward` (idempotent)."""
    llama_cpp.llama_log_set(_forward, ctypes.c_void_p(0))


def close_devnull_files() -> None:
    """Close llama-cpp-python's /dev/null files (its `suppress_stdout_stderr` targets): at
    exit only, when nothing loads or frees a model any more."""
    for name in ("outnull_file", "errnull_file"):
        devnull = getattr(_utils, name, None)
        if devnull is not None:
            devnull.close()
