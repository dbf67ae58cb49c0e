"""A hive fetches an hf:// model from a local Hub through the real huggingface_hub client,
resumes after its connection drops or it is killed, and a worker serves what it fetched."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.hub import FakeHub, HubFile, fake_hub
from tests.fixtures.pki import client_tls
from tests.fixtures.ports import free_port
from tests.hive.conftest import (
    WORKER_START_S,
    HiveFactory,
    add_worker_binary,
    operation_events,
    spawn,
    wait_until,
)

pytestmark = pytest.mark.slow

REPO = "ggml-org/gemma-3-270m-GGUF"
FILE = "gemma-3-270m-Q4_K_M.gguf"
SOURCE = f"hf://{REPO}/{FILE}"


@pytest.fixture
def hub(gguf: Path) -> Iterator[tuple[FakeHub, HubFile]]:
    for served in fake_hub():
        yield served, served.add(REPO, FILE, gguf)


def _hub_env(hub: FakeHub, home: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(home / "hf-home")}


def _post(client: httpx.Client, body: dict[str, Any]) -> str:
    resp = client.post("/v1/models", json=body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["operation_id"])


def test_a_killed_hive_resumes_the_download_and_a_worker_serves_the_model(
    start_hive: HiveFactory, hub: tuple[FakeHub, HubFile], tmp_path: Path
) -> None:
    fake, served = hub
    fake.bytes_per_s = 50e6  # about 5 s for the whole file: time to kill the hive mid-way
    first = start_hive(env=_hub_env(fake, tmp_path))
    with first.client() as client:
        _post(client, {"name": "gemma", "source": SOURCE})
        wait_until(lambda: fake.sent > served.size // 4, 30, "a quarter of the download")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    time.sleep(0.5)  # the hive's half-written bytes are on disk; what was in flight is lost
    before = fake.sent
    assert before < served.size, "the download finished before the hive was killed"
    fake.bytes_per_s = None

    second = start_hive(env=_hub_env(fake, tmp_path))
    with second.client() as client:
        events = operation_events(client, _post(client, {"name": "gemma", "source": SOURCE}))
        assert events[-1]["state"] == "succeeded", events[-1]
        entry = client.get("/v1/models/gemma").json()
        assert add_worker_binary(client, "cpu")[-1]["state"] == "succeeded"
        worker = spawn(client, second, model="gemma")
    resent = fake.sent - before
    assert resent < served.size, f"the second fetch sent {resent} of {served.size} bytes"
    assert (entry["sha256"], entry["revision"]) == (served.sha256, fake.commit(REPO))
    wait_until(lambda: _idle(worker["url"]), WORKER_START_S, "the worker to load the model")
    answer = httpx.post(
        f"{worker['url']}/v1/completions",
        json={"prompt": "The bee", "max_tokens": 4, "temperature": 0},
        timeout=60,
        verify=client_tls("queen", "queen"),
    )
    assert answer.status_code == 200, answer.text


def test_a_dropped_connection_resumes_within_one_fetch(
    start_hive: HiveFactory, hub: tuple[FakeHub, HubFile], tmp_path: Path
) -> None:
    fake, served = hub
    fake.drop_after = served.size // 2
    hive = start_hive(env=_hub_env(fake, tmp_path))
    with hive.client() as client:
        events = operation_events(client, _post(client, {"name": "gemma", "source": SOURCE}))
    assert events[-1]["state"] == "succeeded", events[-1]
    assert fake.sent == served.size  # the second request asked for the second half only


def test_a_wrong_pinned_sha256_leaves_nothing_in_the_catalog(
    start_hive: HiveFactory, hub: tuple[FakeHub, HubFile], tmp_path: Path
) -> None:
    fake, served = hub
    hive = start_hive(env=_hub_env(fake, tmp_path))
    with hive.client() as client:
        body = {"name": "gemma", "source": SOURCE, "sha256": "0" * 64}
        events = operation_events(client, _post(client, body))
        assert client.get("/v1/models").json() == []
    assert events[-1]["state"] == "failed"
    assert f"{SOURCE} has {served.sha256}" in events[-1]["error"]
    assert fake.sent == 0


def _idle(url: str) -> bool:
    try:
        health = httpx.get(f"{url}/health", timeout=1, verify=client_tls("queen", "queen"))
        return bool(health.json()["state"] == "idle")
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def test_two_requests_for_one_model_share_one_transfer(
    start_hive: HiveFactory, hub: tuple[FakeHub, HubFile], tmp_path: Path
) -> None:
    fake, served = hub
    fake.bytes_per_s = 200e6
    hive = start_hive(env=_hub_env(fake, tmp_path))
    with hive.client() as client:
        body = {"name": "gemma", "source": SOURCE}
        first, second = _post(client, body), _post(client, body)
        assert first == second  # the second request joins the running operation
        assert operation_events(client, first)[-1]["state"] == "succeeded"
    assert fake.sent == served.size


def test_a_hive_copies_a_model_from_its_peer_and_the_source_sends_it_once(
    start_hive: HiveFactory, hub: tuple[FakeHub, HubFile], tmp_path: Path
) -> None:
    fake, served = hub
    url = f"{fake.cdn_url}/cdn/{served.sha256}"  # a plain https-style URL with its sha256
    body = {"name": "gemma", "source": url, "sha256": served.sha256}
    seed = start_hive(env={"HOME": str(tmp_path / "seed")}, port=free_port())
    other = start_hive(env={"HOME": str(tmp_path / "other")}, port=free_port())
    with seed.client() as client:
        assert operation_events(client, _post(client, body))[-1]["state"] == "succeeded"
    down = f"https://127.0.0.1:{free_port()}"  # a peer that is gone is passed over
    with other.client() as client:
        commit = "9b3a1f0c6f2d4e0d8c1b2a3f4e5d6c7b8a9f0e1d"  # as the plan resolved it
        copy = {**body, "peers": [down, seed.url], "revision": commit}
        events = operation_events(client, _post(client, copy))
        entry = client.get("/v1/models/gemma").json()
    assert events[-1]["state"] == "succeeded", events[-1]
    assert (entry["sha256"], entry["revision"]) == (served.sha256, commit)
    assert fake.sent == served.size  # the second hive's bytes came from the first


def test_a_peer_with_other_bytes_is_not_trusted_and_the_source_serves(
    start_hive: HiveFactory, hub: tuple[FakeHub, HubFile], tmp_path: Path, gguf: Path
) -> None:
    fake, served = hub
    url = f"{fake.cdn_url}/cdn/{served.sha256}"
    liar = start_hive(env={"HOME": str(tmp_path / "liar")}, port=free_port())
    with liar.client() as client:  # it holds another file under the same name
        other = tmp_path / "other.gguf"
        other.write_bytes(b"GGUF" + b"not the model" * 1000)
        events = operation_events(
            client, _post(client, {"name": "gemma", "source": other.as_uri()})
        )
        assert events[-1]["state"] == "succeeded"
    hive = start_hive(env={"HOME": str(tmp_path / "hive")}, port=free_port())
    with hive.client() as client:
        body = {"name": "gemma", "source": url, "sha256": served.sha256, "peers": [liar.url]}
        events = operation_events(client, _post(client, body))
    assert events[-1]["state"] == "succeeded", events[-1]
    assert fake.sent == served.size
