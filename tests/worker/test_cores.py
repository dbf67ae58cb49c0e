"""CPU workers share their machine's cores: real worker processes of one cluster (one queen URL,
its own here so that other tests' workers do not count), each without `--threads`, follow
their share as a worker starts and stops beside them, without a restart."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from rbee.worker.cores import SHARE_EVERY_S
from tests.worker.conftest import Worker, launch_worker, wait_until

pytestmark = pytest.mark.slow


def _threads(worker: Worker) -> int:
    threads: int = worker.health()["threads"]
    return threads


def test_cpu_workers_of_a_cluster_follow_their_share_of_the_cores(
    gguf: Path, tmp_path: Path
) -> None:
    cores = len(os.sched_getaffinity(0))
    cluster = f"http://127.0.0.1:9/{uuid.uuid4().hex}"  # no queen: the workers serve regardless
    first = launch_worker(cluster, gguf, tmp_path)
    given: Worker | None = None
    second: Worker | None = None
    try:
        first.wait_ready()
        assert _threads(first) == cores
        second = launch_worker(cluster, gguf, tmp_path)
        second.wait_ready()
        half = max(1, cores // 2)
        assert _threads(second) == half  # read as it loaded
        wait_until(lambda: _threads(first) == half, SHARE_EVERY_S + 5, "first worker's share")
        pid = first.proc.pid
        second.stop()
        second = None
        wait_until(lambda: _threads(first) == cores, SHARE_EVERY_S + 5, "every core again")
        # A worker the YAML gives threads keeps them and leaves the rest to the others.
        given = launch_worker(cluster, gguf, tmp_path, "--threads", "1")
        given.wait_ready()
        assert _threads(given) == 1
        wait_until(
            lambda: _threads(first) == max(1, cores - 1), SHARE_EVERY_S + 5, "the cores left"
        )
        assert first.proc.pid == pid and first.proc.poll() is None  # never restarted
    finally:
        for worker in (first, second, given):
            if worker is not None:
                worker.stop()
