"""Daemon logs, read where they are written: a log file, or a systemd unit's journal.

Every rbee daemon logs `setup_logging`'s lines, which start with the local time
(`2026-11-27 10:00:00,123 level=INFO ...`). `since` keeps the entries stamped within that many
seconds; a line without a stamp (a traceback, llama.cpp's own output) belongs to the entry
before it and is kept or dropped with it. `follow` streams the lines written after the tail,
as `tail -F` does (a truncated or replaced file is read again from its start), until the
reader goes away.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from starlette.responses import Response, StreamingResponse

from rbee.wire import sse
from rbee.wire.logs import LogQuery

__all__ = ["JournalLog", "LogFile", "LogSource", "log_response", "own_log", "tail_lines"]

_MEDIA_TYPE = "text/plain; charset=utf-8"
_STAMP = re.compile(rb"^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)")
_CHUNK = 64 * 1024
# A `since` far back in a huge log reads at most this much of its end.
_MAX_SCAN = 64 * 1024 * 1024
_MAX_READ = 1024 * 1024
_POLL_S = 0.25


class LogSource(Protocol):
    """A log that can be read: its last lines, then (with `follow`) the new ones."""

    def read(self, query: LogQuery) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True)
class LogFile:
    """A log file on this machine."""

    path: Path

    async def read(self, query: LogQuery) -> AsyncIterator[bytes]:
        text, offset = await asyncio.to_thread(tail_lines, self.path, query.lines, query.since)
        if text:
            yield text
        if query.follow:
            async for chunk in _follow(self.path, offset):
                yield chunk


@dataclass(frozen=True)
class JournalLog:
    """The journal of a systemd unit (`user`: of the user's own service manager)."""

    unit: str
    user: bool

    def command(self, query: LogQuery) -> list[str]:
        """The `journalctl` command line that reads what `query` asks for."""
        argv = ["journalctl", *(["--user"] if self.user else []), "--unit", self.unit]
        argv += ["--output", "cat", "--no-pager", "--lines", str(query.lines)]
        if query.since is not None:
            argv += ["--since", f"@{int(time.time() - query.since)}"]
        if query.follow:
            argv.append("--follow")
        return argv

    async def read(self, query: LogQuery) -> AsyncIterator[bytes]:
        proc = await asyncio.create_subprocess_exec(
            *self.command(query),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                yield line
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def own_log() -> LogFile | JournalLog | None:
    """Where this process's stderr goes: a log file (as `rbee.process.spawn_detached` and the
    network hive's nohup start leave it), a systemd unit's journal, or neither (a terminal,
    a pipe: None)."""
    try:
        fd = os.fstat(2)
    except OSError:
        return None
    if stat.S_ISREG(fd.st_mode):
        try:
            return LogFile(Path(os.readlink("/proc/self/fd/2")))
        except OSError:
            return None
    # systemd sets JOURNAL_STREAM to the device and inode of the stream it gave stdout/stderr.
    if os.environ.get("JOURNAL_STREAM") == f"{fd.st_dev}:{fd.st_ino}":
        try:
            cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
        return _unit_of(cgroup)
    return None


def _unit_of(cgroup: str) -> JournalLog | None:
    """The service unit in a `/proc/PID/cgroup` (cgroup v2: `0::/user.slice/…/NAME.service`)."""
    for line in cgroup.splitlines():
        parts = line.partition("::")[2].split("/")
        units = [part for part in parts if part.endswith(".service")]
        if units and units[-1].startswith(("user@", "user-runtime-dir@")):
            continue
        if units:
            return JournalLog(units[-1], user=any(p.startswith("user@") for p in parts))
    return None


async def log_response(source: LogSource, query: LogQuery) -> Response:
    """The log as the answer of a request: the tail at once, or streamed on with `follow`."""
    if not query.follow:
        body = b"".join([chunk async for chunk in source.read(query)])
        return Response(body, media_type=_MEDIA_TYPE)
    return StreamingResponse(source.read(query), media_type=_MEDIA_TYPE, headers=sse.HEADERS)


def tail_lines(path: Path, lines: int, since: float | None) -> tuple[bytes, int]:
    """The last `lines` complete lines of `path` (of the entries stamped within `since`
    seconds, when given), each ending in a newline, and the offset after the last of them
    (where following goes on). A missing file has none."""
    cutoff = None if since is None else time.time() - since
    try:
        log = path.open("rb")
    except FileNotFoundError:
        return b"", 0
    with log:
        end = log.seek(0, os.SEEK_END)
        window = _CHUNK
        while True:
            start = max(0, end - window)
            log.seek(start)
            data = log.read(end - start)
            complete = data[: data.rfind(b"\n") + 1]
            found = complete.split(b"\n")[:-1]
            if start > 0:
                found = found[1:]  # the window began inside it
            kept = _within(found, cutoff)
            if start == 0 or window >= _MAX_SCAN or len(kept) >= lines or _older(found, cutoff):
                break
            window *= 4
    return b"".join(line + b"\n" for line in kept[-lines:]), start + len(complete)


def _stamp(line: bytes) -> float | None:
    """The local time at the start of a log line, as seconds since the epoch."""
    match = _STAMP.match(line)
    if match is None:
        return None
    try:
        parsed = time.strptime(f"{match[1].decode()} {match[2].decode()}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return time.mktime(parsed)


def _within(lines: list[bytes], cutoff: float | None) -> list[bytes]:
    """The lines of entries stamped at or after `cutoff`; lines before any stamp are older."""
    if cutoff is None:
        return lines
    kept: list[bytes] = []
    keep = False
    for line in lines:
        stamp = _stamp(line)
        if stamp is not None:
            # A stamp has whole seconds: an entry of the cutoff's own second is kept.
            keep = stamp >= int(cutoff)
        if keep:
            kept.append(line)
    return kept


def _older(lines: list[bytes], cutoff: float | None) -> bool:
    """Whether the first stamped line is from before `cutoff`: every earlier one is too."""
    if cutoff is None:
        return False
    for line in lines:
        stamp = _stamp(line)
        if stamp is not None:
            return stamp < int(cutoff)
    return False


async def _follow(path: Path, offset: int) -> AsyncIterator[bytes]:
    """The complete lines written to `path` after `offset`, as they come."""
    pending = b""
    inode: int | None = None
    while True:
        try:
            found = path.stat()
        except FileNotFoundError:
            await asyncio.sleep(_POLL_S)
            continue
        if (inode is not None and found.st_ino != inode) or found.st_size < offset:
            offset, pending = 0, b""  # replaced or truncated: the new file from its start
        inode = found.st_ino
        if found.st_size <= offset:
            await asyncio.sleep(_POLL_S)
            continue
        data = await asyncio.to_thread(_read, path, offset, min(found.st_size - offset, _MAX_READ))
        offset += len(data)
        complete, newline, pending = (pending + data).rpartition(b"\n")
        if newline:
            yield complete + newline
        elif len(pending) > _MAX_READ:  # no newline in sight: pass it on as it is
            yield pending
            pending = b""


def _read(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as log:
        log.seek(offset)
        return log.read(size)
