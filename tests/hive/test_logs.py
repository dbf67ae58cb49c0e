"""The hive's logs over HTTP: its own (`/v1/logs`) and its workers' (`/v1/worker-logs/ID`),
the tail, `since`, and `follow` streaming new lines until the reader goes."""

from __future__ import annotations

import time
from pathlib import Path

from tests.hive.conftest import Hive


def _stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S,000", time.localtime(time.time() - seconds_ago))


def _worker_log(hive: Hive, worker_id: str) -> Path:
    logs = hive.home / ".local" / "state" / "rbee" / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{worker_id}.log"


def test_the_hives_own_log_is_the_file_its_output_goes_to(hive: Hive) -> None:
    with hive.client() as client:
        answer = client.get("/v1/logs", params={"lines": 100})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert f"listening host=127.0.0.1 port={hive.port} name={hive.name}" in answer.text
    assert answer.text == hive.stderr.read_text()[-len(answer.text) :]


def test_since_keeps_only_entries_stamped_within_it(hive: Hive) -> None:
    serving = f"{_stamp(5)} level=INFO serving"
    _worker_log(hive, "w1").write_text(
        f"{_stamp(7200)} level=INFO loading\nllama.cpp says hello\n{serving}\nslot 0 ready\n"
    )
    with hive.client() as client:
        recent = client.get("/v1/worker-logs/w1", params={"since": 600})
        everything = client.get("/v1/worker-logs/w1")
        bad = client.get("/v1/worker-logs/w1", params={"since": "ten minutes"})
    assert recent.text.splitlines() == [serving, "slot 0 ready"]
    assert len(everything.text.splitlines()) == 4
    assert bad.status_code == 422 and bad.json()["error"]["message"].startswith("since:")


def test_follow_streams_what_is_written_after_the_tail(hive: Hive) -> None:
    log = _worker_log(hive, "w2")
    log.write_text("one\ntwo\n")
    with (
        hive.client() as client,
        client.stream("GET", "/v1/worker-logs/w2", params={"lines": 1, "follow": 1}) as answer,
    ):
        assert answer.status_code == 200
        chunks = answer.iter_text()
        assert next(chunks) == "two\n"
        with log.open("a") as out:
            out.write("three\n")
        assert next(chunks) == "three\n"
    # The reader went away: the hive still answers (its stream ended with the connection).
    with hive.client() as client:
        assert client.get("/v1/worker-logs/w2").text == "one\ntwo\nthree\n"
