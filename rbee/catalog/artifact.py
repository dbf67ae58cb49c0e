"""The artifact catalog: `<root>/<name>/{metadata.json, payload}`, written whole or not at all.

An artifact is fetched into a staging directory next to its final place, checked against its
sha256 (computed while the bytes stream in), and renamed into place in one step: a reader never
sees a half-written payload under the real name.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from pydantic import ValidationError

from rbee.catalog.gguf import GgufError, read_facts
from rbee.catalog.vendors import Progress, Resolved, Sink, Vendor
from rbee.catalog.vendors.file import FileVendor
from rbee.catalog.vendors.hf import HfVendor
from rbee.catalog.vendors.http import HttpVendor, download
from rbee.defaults import split_gguf
from rbee.errors import NotFoundError, RbeeError
from rbee.net import hide_url_secrets
from rbee.paths import contained
from rbee.wire import GgufFacts, ModelEntry

__all__ = [
    "METADATA",
    "PAYLOAD",
    "ArtifactCatalog",
    "ChecksumMismatchError",
    "InvalidArtifactError",
    "default_vendors",
    "entry_dir",
]

METADATA = "metadata.json"
PAYLOAD = "payload"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_log = logging.getLogger(__name__)


class InvalidArtifactError(RbeeError):
    """A name, source or sha256 the catalog refuses before fetching anything."""


class ChecksumMismatchError(RbeeError):
    """The fetched bytes do not hash to the expected sha256."""


def default_vendors() -> dict[str, Vendor]:
    """The vendors this version ships, by URL scheme (the schemes the YAML accepts)."""
    http = HttpVendor()
    return {"file": FileVendor(), "hf": HfVendor(), "https": http, "http": http}


def _no_progress(done: int, total: int | None) -> None:
    """Progress callback for callers that do not watch."""


class ArtifactCatalog:
    """One kind of artifact (models, worker binaries) under `root`, one directory per name."""

    def __init__(self, root: Path, vendors: Mapping[str, Vendor] | None = None) -> None:
        self.root = root
        self._vendors = dict(default_vendors() if vendors is None else vendors)

    def list(self) -> list[ModelEntry]:
        """Every complete artifact, sorted by name (staging directories are skipped)."""
        if not self.root.is_dir():
            return []
        entries = []
        for child in sorted(self.root.iterdir()):
            if child.name.startswith(".") or not (child / METADATA).is_file():
                continue
            entry = self._read(child)
            if entry is not None:
                entries.append(entry)
        return entries

    def get(self, name: str) -> ModelEntry:
        """The artifact called `name`; NotFoundError when there is none."""
        entry = self._read(self._dir(name))
        if entry is None:
            raise NotFoundError(f"no artifact named {name!r} in {self.root}")
        return entry

    def remove(self, name: str) -> ModelEntry:
        """Delete the artifact called `name` (and any partial download of it) and return what
        it was; NotFoundError when absent."""
        entry = self.get(name)
        self._discard(self._dir(name))
        for partial in self._partials(name):
            self._discard(partial)
        _log.info("artifact removed name=%s root=%s", name, self.root)
        return entry

    def clean_partials(self, max_age_s: float) -> builtins.list[str]:
        """Delete partial downloads nobody continued for `max_age_s` (a model taken out of the
        YAML mid-download); the names of what was deleted."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - max_age_s
        cleaned = []
        for partial in self._partials("*"):
            if max((p.stat().st_mtime for p in partial.iterdir()), default=0.0) < cutoff:
                self._discard(partial)
                cleaned.append(partial.name)
        if cleaned:
            _log.info("stale partial downloads removed dirs=%s", ",".join(cleaned))
        return cleaned

    def _partials(self, name: str) -> builtins.list[Path]:
        """`.NAME.partial` and the parts of a split one (`.NAME.partial-K`)."""
        return [
            path
            for pattern in (f".{name}.partial", f".{name}.partial-*")
            for path in self.root.glob(pattern)
            if path.is_dir()
        ]

    def check(self, name: str, source: str, sha256: str | None) -> None:
        """Refuse at once what `add` would refuse before fetching: name, scheme, sha256 format."""
        self._dir(name)
        self._vendor(source)
        _normalized(sha256)

    def present(self, name: str, source: str, sha256: str | None) -> ModelEntry | None:
        """The existing artifact when it is already this one (same sha256, else same source)."""
        expected = _normalized(sha256)
        try:
            entry = self.get(name)
        except NotFoundError:
            return None
        same = entry.sha256 == expected if expected is not None else entry.source == source
        return entry if same and entry.damaged is None else None

    def add(
        self,
        name: str,
        source: str,
        sha256: str | None = None,
        progress_cb: Progress | None = None,
        mirrors: Sequence[Resolved] = (),
    ) -> ModelEntry:
        """Fetch `source` as `name`, verify it, and rename it into place; a no-op when present.

        The bytes land in `.<name>.partial/` first. A fetch that is cut off (a dropped
        connection, a killed hive) leaves them there, and the next `add` of the same source
        continues from them. With a sha256, `mirrors` (other hives' copies) are tried before
        the source: a copy is trusted only if it hashes to it.
        """
        self._dir(name)
        vendor = self._vendor(source)
        expected = _normalized(sha256)
        existing = self.present(name, source, expected)
        if existing is not None:
            _log.info("artifact already present name=%s sha256=%s", name, existing.sha256)
            return existing
        progress = progress_cb or _no_progress
        self.root.mkdir(parents=True, exist_ok=True)
        # A peer serves a model as one file: a split GGUF comes from its source.
        if expected is not None and split_gguf(source) is None:
            for mirror in mirrors:
                try:
                    return self._fetch(name, source, expected, mirror, _from_peer, progress)
                except (RbeeError, OSError) as exc:
                    _log.warning(
                        "copy from a peer failed name=%s peer=%s error=%s: trying the next",
                        name, mirror.url, exc,
                    )  # fmt: skip
        resolved = vendor.resolve(source)
        if expected is not None and resolved.sha256 not in (None, expected):
            raise ChecksumMismatchError(
                f"sha256 mismatch for {name}: the cluster YAML pins {expected}, "
                f"{hide_url_secrets(source)} has {resolved.sha256}",
                hint="fix the sha256 in the YAML, or pin the revision it was taken from",
            )
        expected = expected or resolved.sha256
        _check_disk(name, self.root, resolved.size, _size(self._staging(name) / PAYLOAD))
        return self._fetch(name, source, expected, resolved, vendor.fetch, progress)

    def _staging(self, name: str) -> Path:
        return self.root / f".{name}.partial"

    def _fetch(
        self,
        name: str,
        source: str,
        expected: str | None,
        resolved: Resolved,
        fetch: Callable[[Resolved, Sink, Progress], None],
        progress: Progress,
    ) -> ModelEntry:
        """Fetch `resolved` (every part of a split GGUF) into partials (continuing them),
        check each against its sha256, and move the whole into place at once."""
        staging = self._staging(name)
        parts = resolved.parts or (resolved,)
        count = len(parts)
        files: list[tuple[Path, str]] = []  # (payload of a finished partial, its file name)
        digests: list[str] = []
        done = 0
        for number, part in enumerate(parts, 1):
            # The first part is what the YAML and the Hub name; the others check themselves.
            want = expected if number == 1 else part.sha256
            directory = staging if count == 1 else staging.with_name(f"{staging.name}-{number}")
            shown = hide_url_secrets(source)
            label = shown if count == 1 else f"{shown}#{number}"

            def moved(d: int, t: int | None, before: int = done) -> None:
                progress(before + d, resolved.size if count > 1 else t)

            digest, size = self._fetch_part(name, directory, label, want, part, fetch, moved)
            digests.append(digest)
            done += size
            file = PAYLOAD if count == 1 else f"{PAYLOAD}-{number:05d}-of-{count:05d}.gguf"
            files.append((directory / PAYLOAD, file))
        if count > 1:  # gather the parts in one directory, named as llama.cpp looks for them
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            for payload, file in files:
                os.replace(payload, staging / file)
                shutil.rmtree(payload.parent, ignore_errors=True)
        final = self._dir(name)
        actual = digests[0]
        entry = ModelEntry(
            name=name,
            source=source,
            sha256=actual,
            size_bytes=done,
            path=str(final / files[0][1]),
            revision=resolved.revision,
            facts=_facts([staging / file for _, file in files]),
        )
        (staging / METADATA).write_text(entry.model_dump_json(indent=2) + "\n")
        (staging / "source.json").unlink(missing_ok=True)
        self._install(staging, final)
        _log.info(
            "artifact added name=%s sha256=%s bytes=%d parts=%d from=%s",
            name, actual, entry.size_bytes, count, resolved.url,
        )  # fmt: skip
        return entry

    def _fetch_part(
        self,
        name: str,
        directory: Path,
        label: str,
        expected: str | None,
        resolved: Resolved,
        fetch: Callable[[Resolved, Sink, Progress], None],
        progress: Progress,
    ) -> tuple[str, int]:
        """Fetch one file into the partial `directory`; its sha256 and size once complete."""
        with _Partial(directory, label, expected) as partial:
            try:
                fetch(resolved, partial, progress)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                # Kept, the bytes would only hold on to the space that ran out.
                partial.discard()
                raise RbeeError(
                    f"the disk filled up while fetching {name} ({partial.offset} bytes in): "
                    f"{shutil.disk_usage(self.root).free} bytes free in {self.root}",
                    hint="free space on the hive or move its cache",
                ) from None
            actual = partial.finish()
            if expected is not None and actual != expected:
                partial.discard()
                raise ChecksumMismatchError(
                    f"sha256 mismatch for {name}: expected {expected}, got {actual}",
                    hint="check the sha256 in the cluster YAML against the source",
                )
            return actual, partial.offset

    def _dir(self, name: str) -> Path:
        return entry_dir(self.root, name)

    def _vendor(self, source: str) -> Vendor:
        scheme = urlsplit(source).scheme
        vendor = self._vendors.get(scheme)
        if vendor is None:
            raise InvalidArtifactError(
                f"source scheme {scheme or '(none)'!r} is not supported yet",
                hint=f"supported: {', '.join(f'{s}://' for s in sorted(self._vendors))}",
            )
        return vendor

    def _read(self, directory: Path) -> ModelEntry | None:
        try:
            entry = ModelEntry.model_validate_json((directory / METADATA).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            _log.warning("unreadable artifact metadata dir=%s error=%s", directory, exc)
            return None
        # The recorded path goes stale when the catalog moves; the directory is the truth.
        entry = entry.model_copy(update={"path": str(directory / Path(entry.path).name)})
        damaged = _damage(directory, entry)
        if damaged is not None:
            _log.warning("artifact damaged name=%s why=%s", entry.name, damaged)
            return entry.model_copy(update={"damaged": damaged})
        facts = entry.facts
        stale = facts is None or facts.purpose is None or facts.layer_bytes is None
        if stale and entry.path.endswith((PAYLOAD, ".gguf")):
            entry = self._with_facts(directory, entry)
        return entry

    def _with_facts(self, directory: Path, entry: ModelEntry) -> ModelEntry:
        """An entry recorded before rbee read GGUF headers (or before it read what a model is
        for, or the weights of each layer) gets its facts, kept from then on."""
        parts = sorted(directory.glob(f"{PAYLOAD}-*-of-*.gguf")) or [Path(entry.path)]
        facts = _facts(parts)
        if facts is None:
            return entry
        entry = entry.model_copy(update={"facts": facts})
        fd, staging = tempfile.mkstemp(prefix=f".{METADATA}.", dir=directory)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(entry.model_dump_json(indent=2) + "\n")
            os.replace(staging, directory / METADATA)
        except OSError as exc:  # a read-only catalog still lists the facts, unsaved
            _log.warning("cannot save GGUF facts dir=%s error=%s", directory, exc)
            Path(staging).unlink(missing_ok=True)
        return entry

    def _install(self, staging: Path, final: Path) -> None:
        try:
            os.rename(staging, final)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        # Replacing an older artifact: move it aside first so the new one lands in one rename.
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=self.root))
        os.rename(final, old / PAYLOAD)
        os.rename(staging, final)
        self._discard(old)

    @staticmethod
    def _discard(directory: Path) -> None:
        shutil.rmtree(directory, ignore_errors=True)


class _Partial:
    """The bytes of one artifact on their way in: `<dir>/payload`, hashed as they come, and
    `<dir>/source.json` saying what they are bytes of (so a partial of another source or
    checksum is started over, never continued)."""

    def __init__(self, directory: Path, source: str, sha256: str | None) -> None:
        self.directory = directory
        self._label = {"source": source, "sha256": sha256}
        self._digest = hashlib.sha256()
        self._out: BinaryIO | None = None
        self.offset = 0

    def __enter__(self) -> _Partial:
        label = self.directory / "source.json"
        try:
            same = json.loads(label.read_text()) == self._label
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        label.write_text(json.dumps(self._label))
        self._out = (self.directory / PAYLOAD).open("ab+")
        self._out.seek(0)
        while chunk := self._out.read(1 << 20):
            self._digest.update(chunk)
            self.offset += len(chunk)
        if self.offset:
            _log.info("resuming download dir=%s from=%d", self.directory, self.offset)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._out is not None:
            self._out.close()

    def write(self, chunk: bytes) -> None:
        assert self._out is not None
        self._out.write(chunk)
        self._digest.update(chunk)
        self.offset += len(chunk)

    def restart(self) -> None:
        assert self._out is not None
        self._out.seek(0)
        self._out.truncate()
        self._digest = hashlib.sha256()
        self.offset = 0

    def finish(self) -> str:
        """Flush to disk; the sha256 of every byte."""
        assert self._out is not None
        self._out.flush()
        os.fsync(self._out.fileno())
        return self._digest.hexdigest()

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _damage(directory: Path, entry: ModelEntry) -> str | None:
    """Why the files under `directory` are no longer what `entry` recorded, or None.

    Missing files and another size are seen from `stat`. A file written since its metadata
    (mtime) is hashed once more: a mismatch is damage, a match is remembered by touching the
    metadata, so a listing hashes a file only after it changed.
    """
    first = Path(entry.path)
    parts = sorted(directory.glob(f"{PAYLOAD}-*-of-*.gguf")) or [first]
    try:
        size = sum(part.stat().st_size for part in parts)
        metadata_mtime = (directory / METADATA).stat().st_mtime_ns
        first_mtime = first.stat().st_mtime_ns
    except FileNotFoundError as exc:
        return f"{Path(str(exc.filename)).name} is missing"
    if size != entry.size_bytes:
        return f"its file holds {size} bytes, not the {entry.size_bytes} fetched"
    if first_mtime > metadata_mtime:
        digest = hashlib.sha256()
        with first.open("rb") as payload:
            while chunk := payload.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            return "its file no longer matches its sha256 (changed on disk)"
        checked = max(time.time_ns(), first_mtime)
        with contextlib.suppress(OSError):  # a read-only catalog: hashed again next time
            os.utime(directory / METADATA, ns=(checked, checked))
    return None


def _facts(payloads: list[Path]) -> GgufFacts | None:
    """The model's facts from its (first) file; the parameters and weights of every part."""
    try:
        facts = read_facts(payloads[0])
        rest = [read_facts(path) for path in payloads[1:]]
    except GgufError as exc:
        _log.warning("no GGUF facts path=%s error=%s", payloads[0], exc)
        return None
    for part in rest:
        facts = facts.model_copy(
            update={
                "parameters": _plus(facts.parameters, part.parameters),
                "layer_bytes": _summed(facts.layer_bytes, part.layer_bytes),
                "input_bytes": _plus(facts.input_bytes, part.input_bytes),
                "output_bytes": _plus(facts.output_bytes, part.output_bytes),
            }
        )
    return facts


def _plus(whole: int | None, part: int | None) -> int | None:
    return None if whole is None else whole + (part or 0)


def _summed(whole: list[int] | None, part: list[int] | None) -> list[int] | None:
    """Per-block bytes of two parts of one split model (each holds some blocks' tensors)."""
    if whole is None or part is None:
        return whole
    longest = max(len(whole), len(part))
    padded = [*whole, *[0] * (longest - len(whole))], [*part, *[0] * (longest - len(part))]
    return [a + b for a, b in zip(*padded, strict=True)]


def _from_peer(resolved: Resolved, sink: Sink, progress: Progress) -> None:
    # A peer that is down is passed over quickly: the source is the fallback.
    download(resolved, sink, progress, attempts=2)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _check_disk(name: str, root: Path, size: int | None, have: int) -> None:
    """Refuse to start a download that cannot fit, naming the bytes needed and free."""
    if size is None:
        return
    needed = size - have
    free = shutil.disk_usage(root).free
    if needed > free:
        raise RbeeError(
            f"not enough disk for {name}: needs {needed} bytes more, {free} free in {root}",
            hint="free space on the hive or move its cache",
        )


def _normalized(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256.match(value):
        raise InvalidArtifactError(f"invalid sha256 {sha256!r}: expected 64 hex digits")
    return value


def entry_dir(root: Path, name: str) -> Path:
    """The directory of catalog entry `name` under `root`; InvalidArtifactError for a name
    that would escape it or is hidden (shared by the model and worker-binary catalogs)."""
    try:
        return contained(root, name)
    except ValueError as exc:
        raise InvalidArtifactError(str(exc)) from None
