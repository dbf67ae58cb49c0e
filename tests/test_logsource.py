"""Reading daemon logs: the tail, `since` by each entry's stamp, following a growing file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rbee.logsource import JournalLog, LogFile, _unit_of, tail_lines
from rbee.wire.logs import LogQuery


def _stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S,000", time.localtime(time.time() - seconds_ago))


def test_the_tail_is_the_last_complete_lines_and_where_to_follow_from(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"".join(b"line %d\n" % n for n in range(100_000)) + b"half a li")
    text, offset = tail_lines(log, 3, None)
    assert text == b"line 99997\nline 99998\nline 99999\n"
    assert offset == log.stat().st_size - len(b"half a li")  # followed once it is whole


def test_a_missing_log_has_no_lines(tmp_path: Path) -> None:
    assert tail_lines(tmp_path / "never.log", 10, None) == (b"", 0)


def test_since_keeps_recent_entries_with_their_unstamped_lines(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text(
        "llama.cpp banner before any stamp\n"
        f"{_stamp(3600)} level=INFO old entry\n"
        "Traceback of the old entry\n"
        f"{_stamp(30)} level=INFO recent entry\n"
        "  its second line\n"
        f"{_stamp(7200)} level=INFO a clock that went back\n"
        f"{_stamp(1)} level=INFO newest entry\n"
    )
    text, _ = tail_lines(log, 100, 600)
    assert [line.split(" level=INFO ")[-1] for line in text.decode().splitlines()] == [
        "recent entry",
        "  its second line",
        "newest entry",
    ]
    assert tail_lines(log, 1, 600)[0].decode().endswith("newest entry\n")
    assert b"banner" in tail_lines(log, 100, None)[0]  # without `since`, every line


def test_since_reads_back_far_enough_in_a_big_log(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    old, recent = _stamp(3600), _stamp(60)
    log.write_text(
        "".join(f"{old} level=INFO old {n}\n" for n in range(20_000))
        + "".join(f"{recent} level=INFO recent {n}\n" for n in range(20_000))
    )
    text, _ = tail_lines(log, 10_000, 600)
    lines = text.decode().splitlines()
    assert len(lines) == 10_000 and lines[-1].endswith("recent 19999")
    assert all("recent" in line for line in lines)


def test_follow_streams_appended_lines_and_starts_over_on_truncation(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("first\n")

    async def read() -> list[bytes]:
        got: list[bytes] = []
        stream = LogFile(log).read(LogQuery(lines=5, follow=True))
        got.append(await anext(stream))
        with log.open("a") as out:
            out.write("second\nthi")
        got.append(await asyncio.wait_for(anext(stream), 5))
        with log.open("a") as out:
            out.write("rd\n")
        got.append(await asyncio.wait_for(anext(stream), 5))
        log.write_text("after truncation\n")
        got.append(await asyncio.wait_for(anext(stream), 5))
        await stream.aclose()
        return got

    assert asyncio.run(read()) == [b"first\n", b"second\n", b"third\n", b"after truncation\n"]


def test_a_systemd_units_journal_is_found_from_its_cgroup() -> None:
    user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/rbee-hive.service\n"
    system = "0::/system.slice/rbee-queen.service\n"
    assert _unit_of(user) == JournalLog("rbee-hive.service", user=True)
    assert _unit_of(system) == JournalLog("rbee-queen.service", user=False)
    assert _unit_of("0::/user.slice/user-1000.slice/session-3.scope\n") is None
    assert _unit_of("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n") is None


def test_the_journal_is_read_with_the_querys_lines_since_and_follow() -> None:
    journal = JournalLog("rbee-hive.service", user=True)
    argv = journal.command(LogQuery(lines=20, since=600, follow=True))
    assert argv[:4] == ["journalctl", "--user", "--unit", "rbee-hive.service"]
    assert argv[argv.index("--lines") + 1] == "20"
    assert abs(int(argv[argv.index("--since") + 1][1:]) - (time.time() - 600)) < 5
    assert "--follow" in argv and argv[argv.index("--output") + 1] == "cat"
