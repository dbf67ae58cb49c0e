"""`file://` sources: a GGUF file on the hive's own filesystem, copied in 1 MiB chunks.

Only a file that starts as a GGUF does: the catalog serves what it holds to peers, so any other
file (a key, a config) named by a request would leave the machine that way."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from rbee.catalog.vendors import Progress, Resolved, Sink
from rbee.errors import NotFoundError, RbeeError

__all__ = ["CHUNK_BYTES", "GGUF_MAGIC", "FileVendor", "source_path"]

CHUNK_BYTES = 1 << 20
GGUF_MAGIC = b"GGUF"


def source_path(source: str) -> Path:
    """The absolute path named by a `file://` URL (`file:///abs/path` or `file://localhost/...`)."""
    parts = urlsplit(source)
    if parts.scheme != "file" or parts.netloc not in {"", "localhost"}:
        raise RbeeError(
            f"invalid file source {source!r}",
            hint="use file:// followed by an absolute path, e.g. file:///data/model.gguf",
        )
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise RbeeError(f"invalid file source {source!r}: the path must be absolute")
    return path


class FileVendor:
    """Copies a local file into the catalog."""

    def resolve(self, source: str) -> Resolved:
        """The file and its size; NotFoundError when it is missing, RbeeError when it is not a
        GGUF file."""
        path = source_path(source)
        if path.is_dir():
            raise RbeeError(f"source {path} is a directory, not a file")
        try:
            with path.open("rb") as handle:
                magic = handle.read(len(GGUF_MAGIC))
                size = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            raise NotFoundError(f"source file {path} does not exist") from None
        except PermissionError:
            raise RbeeError(f"source file {path} is not readable by the hive") from None
        if magic != GGUF_MAGIC:
            raise RbeeError(
                f"source file {path} is not a GGUF model (it does not start with {GGUF_MAGIC!r})",
                hint="a file:// source names a .gguf file on the hive",
            )
        return Resolved(url=str(path), size=size)

    def fetch(self, resolved: Resolved, sink: Sink, progress: Progress) -> None:
        """Copy the file from `sink.offset` on, reporting bytes done/total after each chunk."""
        path = Path(resolved.url)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"source file {path} does not exist") from None
        except PermissionError:
            raise RbeeError(f"source file {path} is not readable by the hive") from None
        with handle:
            total = path.stat().st_size
            if sink.offset > total:
                sink.restart()
            handle.seek(sink.offset)
            progress(sink.offset, total)
            while chunk := handle.read(CHUNK_BYTES):
                sink.write(chunk)
                progress(sink.offset, total)
