"""A full disk is one clear error before (or while) fetching, and leaves nothing behind.

Needs root to mount a small tmpfs; CI runs as root, so there the test never skips."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee.catalog import ArtifactCatalog
from rbee.catalog.vendors import Progress, Resolved, Sink
from rbee.errors import RbeeError


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("mounting a tmpfs needs root: CI must run this test", pytrace=False)
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", str(mount)], check=True)


def test_a_model_bigger_than_the_free_disk_is_refused_before_a_byte_moves(
    small_disk: Path, tmp_path: Path
) -> None:
    source = tmp_path / "big.gguf"
    source.write_bytes(b"GGUF" + b"\0" * ((2 << 20) - 4))
    catalog = ArtifactCatalog(small_disk / "models")
    with pytest.raises(
        RbeeError, match=r"not enough disk for big: needs 2097152 bytes more, \d+ free"
    ):
        catalog.add("big", source.as_uri())
    assert list(catalog.root.iterdir()) == []


class _SizeUnknown:
    """A source that does not say how big it is (an https:// answer without Content-Length)."""

    def resolve(self, source: str) -> Resolved:
        return Resolved(url=source)

    def fetch(self, resolved: Resolved, sink: Sink, progress: Progress) -> None:
        for _ in range(64):
            sink.write(b"\1" * (64 << 10))


def test_a_disk_that_fills_up_while_fetching_is_a_clear_error_and_frees_its_bytes(
    small_disk: Path,
) -> None:
    catalog = ArtifactCatalog(small_disk / "models", {"https": _SizeUnknown()})
    with pytest.raises(RbeeError, match="the disk filled up while fetching m"):
        catalog.add("m", "https://example.com/m.gguf", "0" * 64)
    assert list(catalog.root.iterdir()) == []
