"""A change that restarts workers replaces them one at a time: the deployment keeps serving."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.fixtures.cluster import kill_strays, new_cluster

pytestmark = pytest.mark.slow


def test_ctx_size_change_rolls_replicas_without_failing_a_request(
    tmp_path: Path, gguf: Path
) -> None:
    cluster = new_cluster(tmp_path, gguf)
    try:
        cluster.write(replicas=2, ctx_size=1024)
        cluster.rbee("apply", "--auto-approve")
        before = {w["worker_id"]: w["pid"] for w in cluster.wait_workers(2)}
        statuses: list[int] = []
        stop = threading.Event()

        def keep_asking() -> None:
            with httpx.Client(headers=cluster.headers, timeout=60) as client:
                while not stop.is_set():
                    body = {
                        "model": "gemma3-270m",
                        "messages": [{"role": "user", "content": "Hi"}],
                        "max_tokens": 4,
                    }
                    response = client.post(f"{cluster.queen_url}/v1/chat/completions", json=body)
                    statuses.append(response.status_code)

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            cluster.write(replicas=2, ctx_size=2048)
            plan = cluster.rbee("plan")
            assert plan.stdout.count("-/+ worker.local.gemma3-270m") == 2
            result = cluster.rbee("apply", "--auto-approve")
        finally:
            stop.set()
            asker.join(60)
        assert "Plan: 0 to add, 2 to change, 0 to destroy." in result.stdout
        after = {w["worker_id"]: w["pid"] for w in cluster.wait_workers(2)}
        assert set(after) == set(before)
        assert not set(after.values()) & set(before.values()), "every replica was replaced"
        assert len(statuses) >= 5
        assert set(statuses) == {200}, statuses
        assert cluster.rbee("plan", "--detailed-exitcode", check=False).returncode == 0
    finally:
        cluster.rbee("down", check=False, timeout=60)
        kill_strays(cluster)
