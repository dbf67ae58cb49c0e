"""The file:// vendor: chunked copy with progress, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.catalog.vendors.file import CHUNK_BYTES, GGUF_MAGIC, FileVendor, source_path
from rbee.errors import NotFoundError, RbeeError


class ListSink:
    def __init__(self, offset: int = 0) -> None:
        self.chunks: list[bytes] = []
        self.start = offset

    @property
    def offset(self) -> int:
        return self.start + sum(map(len, self.chunks))

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def restart(self) -> None:
        self.chunks, self.start = [], 0


def test_copies_in_chunks_reporting_done_and_total(tmp_path: Path) -> None:
    data = GGUF_MAGIC + bytes(range(256)) * (CHUNK_BYTES * 5 // 2 // 256)
    source = tmp_path / "blob"
    source.write_bytes(data)
    sink = ListSink()
    progress: list[tuple[int, int | None]] = []
    vendor = FileVendor()
    vendor.fetch(vendor.resolve(source.as_uri()), sink, lambda d, t: progress.append((d, t)))
    assert b"".join(sink.chunks) == data
    assert max(len(c) for c in sink.chunks) == CHUNK_BYTES
    total = len(data)
    assert progress == [(0, total), (CHUNK_BYTES, total), (2 * CHUNK_BYTES, total), (total, total)]


def test_a_copy_continues_from_the_bytes_already_there(tmp_path: Path) -> None:
    source = tmp_path / "blob"
    source.write_bytes(b"GGUF0123456789")
    sink = ListSink(offset=8)
    vendor = FileVendor()
    vendor.fetch(vendor.resolve(source.as_uri()), sink, lambda d, t: None)
    assert b"".join(sink.chunks) == b"456789"


@pytest.mark.parametrize("content", [b"", b"GGU", b"-----BEGIN OPENSSH PRIVATE KEY-----\n"])
def test_a_file_that_is_no_gguf_is_refused_before_a_byte_is_copied(
    tmp_path: Path, content: bytes
) -> None:
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(content)
    with pytest.raises(RbeeError, match=r"is not a GGUF model") as refused:
        FileVendor().resolve(secret.as_uri())
    assert refused.value.hint == "a file:// source names a .gguf file on the hive"


def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        FileVendor().resolve((tmp_path / "nope").as_uri())


@pytest.mark.parametrize("source", ["file://relative/path", "file://otherhost/x", "https://h/x"])
def test_only_local_absolute_paths_are_sources(source: str) -> None:
    with pytest.raises(RbeeError, match="invalid file source"):
        source_path(source)


def test_percent_escapes_are_decoded(tmp_path: Path) -> None:
    assert source_path((tmp_path / "a b.gguf").as_uri()) == tmp_path / "a b.gguf"
