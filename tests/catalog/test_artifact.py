"""The artifact catalog on disk: whole artifacts or nothing, checked, contained."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from rbee.catalog import (
    ArtifactCatalog,
    ChecksumMismatchError,
    InvalidArtifactError,
    default_vendors,
)
from rbee.catalog.artifact import METADATA, PAYLOAD
from rbee.catalog.vendors import Progress, Resolved, Sink
from rbee.defaults import SOURCE_SCHEMES
from rbee.errors import NotFoundError

DATA = b"GGUF" + b"weights" * 1000  # a file:// source must start as a GGUF
SHA = hashlib.sha256(DATA).hexdigest()


class CountingVendor:
    """A file:// stand-in that counts fetches and bytes sent, and can fail halfway once."""

    def __init__(self, data: bytes = DATA, fail_halfway: bool = False) -> None:
        self.data, self.fail_halfway, self.calls, self.sent = data, fail_halfway, 0, 0

    def resolve(self, source: str) -> Resolved:
        return Resolved(url=source, size=len(self.data))

    def fetch(self, resolved: Resolved, sink: Sink, progress: Progress) -> None:
        self.calls += 1
        rest = self.data[sink.offset :]
        half = len(rest) // 2
        sink.write(rest[:half])
        self.sent += half
        if self.fail_halfway:
            self.fail_halfway = False
            raise OSError("connection dropped")
        sink.write(rest[half:])
        self.sent += len(rest) - half
        progress(len(self.data), len(self.data))


@pytest.fixture
def source(tmp_path: Path) -> str:
    path = tmp_path / "src.gguf"
    path.write_bytes(DATA)
    return path.as_uri()


@pytest.fixture
def catalog(tmp_path: Path) -> ArtifactCatalog:
    return ArtifactCatalog(tmp_path / "models")


def test_add_writes_payload_and_metadata(catalog: ArtifactCatalog, source: str) -> None:
    entry = catalog.add("m", source, SHA)
    directory = catalog.root / "m"
    assert (directory / PAYLOAD).read_bytes() == DATA
    assert json.loads((directory / METADATA).read_text()) == entry.model_dump()
    assert entry.model_dump() == {
        "name": "m",
        "source": source,
        "sha256": SHA,
        "size_bytes": len(DATA),
        "path": str(directory / PAYLOAD),
        "revision": None,
        "facts": None,  # these test bytes are no GGUF
        "damaged": None,
    }
    assert catalog.list() == [entry]
    assert catalog.get("m") == entry


def test_add_without_sha256_records_the_computed_one(catalog: ArtifactCatalog, source: str) -> None:
    assert catalog.add("m", source).sha256 == SHA


def test_add_reports_progress_up_to_the_total(catalog: ArtifactCatalog, source: str) -> None:
    seen: list[tuple[int, int | None]] = []
    catalog.add("m", source, SHA, lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, len(DATA))
    assert seen[-1] == (len(DATA), len(DATA))


def test_a_wrong_sha256_leaves_nothing_under_the_name(
    catalog: ArtifactCatalog, source: str
) -> None:
    with pytest.raises(ChecksumMismatchError, match="sha256 mismatch"):
        catalog.add("m", source, "0" * 64)
    assert list(catalog.root.iterdir()) == []
    with pytest.raises(NotFoundError):
        catalog.get("m")


def test_a_cut_off_fetch_leaves_nothing_under_the_name_and_the_next_add_resumes(
    tmp_path: Path,
) -> None:
    vendor = CountingVendor(fail_halfway=True)
    catalog = ArtifactCatalog(tmp_path / "models", {"file": vendor})
    with pytest.raises(OSError, match="connection dropped"):
        catalog.add("m", "file:///x", SHA)
    assert catalog.list() == []
    assert [p.name for p in catalog.root.iterdir()] == [".m.partial"]
    entry = catalog.add("m", "file:///x", SHA)
    assert Path(entry.path).read_bytes() == DATA
    assert vendor.sent == len(DATA)  # nothing was sent twice
    assert [p.name for p in catalog.root.iterdir()] == ["m"]


def test_a_partial_of_another_source_is_started_over(tmp_path: Path) -> None:
    catalog = ArtifactCatalog(tmp_path / "models", {"file": CountingVendor(fail_halfway=True)})
    with pytest.raises(OSError):
        catalog.add("m", "file:///old", SHA)
    vendor = CountingVendor()
    catalog = ArtifactCatalog(tmp_path / "models", {"file": vendor})
    assert Path(catalog.add("m", "file:///x", SHA).path).read_bytes() == DATA
    assert vendor.sent == len(DATA)


def test_adding_the_same_artifact_twice_is_a_noop(tmp_path: Path) -> None:
    vendor = CountingVendor()
    catalog = ArtifactCatalog(tmp_path / "models", {"file": vendor})
    first = catalog.add("m", "file:///x", SHA)
    assert catalog.add("m", "file:///x", SHA.upper()) == first
    assert catalog.add("m", "file:///x") == first
    assert vendor.calls == 1


def test_a_new_sha256_replaces_the_old_artifact(tmp_path: Path) -> None:
    root = tmp_path / "models"
    ArtifactCatalog(root, {"file": CountingVendor()}).add("m", "file:///x", SHA)
    newer = b"newer weights"
    catalog = ArtifactCatalog(root, {"file": CountingVendor(newer)})
    entry = catalog.add("m", "file:///x", hashlib.sha256(newer).hexdigest())
    assert Path(entry.path).read_bytes() == newer
    assert [child.name for child in catalog.root.iterdir()] == ["m"]


@pytest.mark.parametrize("name", ["../x", "..", ".", "", "a/b", "/abs", ".hidden", "a\0b"])
def test_names_that_escape_or_hide_are_refused(
    catalog: ArtifactCatalog, source: str, tmp_path: Path, name: str
) -> None:
    with pytest.raises(InvalidArtifactError, match="invalid name"):
        catalog.add(name, source, SHA)
    with pytest.raises(InvalidArtifactError):
        catalog.get(name)
    assert not (tmp_path / "x").exists()


def test_an_unknown_scheme_is_not_supported(catalog: ArtifactCatalog) -> None:
    with pytest.raises(InvalidArtifactError, match="source scheme 'ftp' is not supported yet"):
        catalog.check("m", "ftp://host/file.gguf", None)


def test_the_yaml_accepts_exactly_the_schemes_that_have_a_vendor() -> None:
    assert sorted(default_vendors()) == sorted(SOURCE_SCHEMES)


def test_a_malformed_sha256_is_refused(catalog: ArtifactCatalog, source: str) -> None:
    with pytest.raises(InvalidArtifactError, match="64 hex digits"):
        catalog.check("m", source, "abc")


def test_remove_deletes_and_unknown_names_are_not_found(
    catalog: ArtifactCatalog, source: str
) -> None:
    entry = catalog.add("m", source, SHA)
    assert catalog.remove("m") == entry
    assert catalog.list() == []
    with pytest.raises(NotFoundError):
        catalog.remove("m")


def test_list_skips_staging_directories_and_broken_metadata(
    catalog: ArtifactCatalog, source: str
) -> None:
    entry = catalog.add("m", source, SHA)
    (catalog.root / ".m.abc.partial").mkdir()
    (catalog.root / ".m.abc.partial" / PAYLOAD).write_bytes(b"half")
    broken = catalog.root / "broken"
    broken.mkdir()
    (broken / METADATA).write_text("{not json")
    assert catalog.list() == [entry]


def test_an_empty_catalog_lists_nothing(tmp_path: Path) -> None:
    assert ArtifactCatalog(tmp_path / "never-created").list() == []


def test_a_partial_nobody_continues_is_cleaned_and_removing_a_model_drops_its_partial(
    tmp_path: Path,
) -> None:
    root = tmp_path / "models"
    for name in ("old", "fresh"):
        with pytest.raises(OSError):
            ArtifactCatalog(root, {"file": CountingVendor(fail_halfway=True)}).add(
                name, "file:///x", SHA
            )
    week_ago = time.time() - 8 * 24 * 3600
    for path in (root / ".old.partial").iterdir():
        os.utime(path, (week_ago, week_ago))
    catalog = ArtifactCatalog(root)
    assert catalog.clean_partials(7 * 24 * 3600) == [".old.partial"]
    assert sorted(p.name for p in root.iterdir()) == [".fresh.partial"]
    # A model being replaced by a newer file, its download cut off, then removed: all of it.
    ArtifactCatalog(root, {"file": CountingVendor()}).add("m", "file:///x", SHA)
    newer = b"newer weights" * 1000
    with pytest.raises(OSError):
        ArtifactCatalog(root, {"file": CountingVendor(newer, fail_halfway=True)}).add(
            "m", "file:///x", hashlib.sha256(newer).hexdigest()
        )
    assert (root / ".m.partial").is_dir()
    catalog.remove("m")
    assert sorted(p.name for p in root.iterdir()) == [".fresh.partial"]


def test_a_missing_or_resized_file_is_listed_as_damaged_and_fetched_again(
    catalog: ArtifactCatalog, source: str
) -> None:
    entry = catalog.add("m", source, SHA)
    payload = Path(entry.path)
    payload.unlink()
    assert catalog.get("m").damaged == "payload is missing"
    assert catalog.present("m", source, SHA) is None  # so `add` fetches it again
    catalog.add("m", source, SHA)
    assert catalog.get("m").damaged is None
    payload.write_bytes(DATA[:-1])
    assert (
        catalog.get("m").damaged
        == f"its file holds {len(DATA) - 1} bytes, not the {len(DATA)} fetched"
    )


def test_a_file_changed_in_place_is_hashed_once_and_found_out(
    catalog: ArtifactCatalog, source: str
) -> None:
    entry = catalog.add("m", source, SHA)
    payload, metadata = Path(entry.path), Path(entry.path).with_name(METADATA)
    # Touched but unchanged: hashed once, then remembered as checked (metadata touched).
    later = time.time() + 5
    os.utime(payload, (later, later))
    assert catalog.get("m").damaged is None
    assert metadata.stat().st_mtime_ns >= payload.stat().st_mtime_ns
    # Same size, other bytes: only the sha256 tells.
    with payload.open("r+b") as file:
        file.write(b"X")
    os.utime(payload, (later + 5, later + 5))
    assert catalog.get("m").damaged == "its file no longer matches its sha256 (changed on disk)"
    assert catalog.present("m", source, SHA) is None
