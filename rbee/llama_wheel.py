"""What rbee asks of every llama-cpp-python it compiles, and the check that a wheel has it.

Every build (`make install`, a hive's runtime, the wheelhouse of remote hives) turns on
llama.cpp's RPC backend, so any hive can lend its devices to a worker that spans it and any
worker can span (`span:` in the YAML). pip's wheel cache keys a built wheel by its source, not
by CMAKE_ARGS: a wheel cached from an older build without RPC would be handed back, so each
build checks what it got (`has_rpc`) and compiles again without the cache when it lacks it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

__all__ = ["RPC_CMAKE_ARGS", "has_rpc"]

#: CMAKE_ARGS every llama-cpp-python build of rbee's carries.
RPC_CMAKE_ARGS = "-DGGML_RPC=on"


def has_rpc(wheel: Path) -> bool:
    """Whether a llama-cpp-python wheel holds llama.cpp's RPC backend (libggml-rpc)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return any("/libggml-rpc." in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
