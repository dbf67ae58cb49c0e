"""The walking skeleton end to end: YAML → rbee apply → a streamed answer → down.

Real processes on real sockets: the rbee CLI, a detached queen, its child hive and
llama-cpp-python workers on the real Gemma 3 270M model. The tests of this module run in
order against one cluster, each checking one behaviour of the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rbee.pki import client_context
from tests.fixtures.cluster import LocalCluster, kill_strays, new_cluster, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[LocalCluster]:
    the_cluster = new_cluster(tmp_path_factory.mktemp("home"), gguf)
    yield the_cluster
    the_cluster.rbee("down", check=False, timeout=60)
    kill_strays(the_cluster)


def test_apply_from_nothing_brings_up_queen_hive_model_and_worker(cluster: LocalCluster) -> None:
    result = cluster.rbee("apply", "--auto-approve")
    assert "Apply complete!" in result.stdout
    for address in (
        "hive.local",
        "worker_binary.local.cpu",
        "model.local.gemma3-270m",
        "worker.local.gemma3-270m[0]",
    ):
        assert f"{address}: done" in result.stdout
    [worker] = cluster.workers()
    assert worker["worker_id"] == "local.gemma3-270m.0"
    assert worker["state"] == "idle"
    assert worker["slots_total"] == 2
    assert worker["url"].startswith("https://")  # the queen reaches its workers over mutual TLS
    assert (cluster.home / ".cache/rbee/models/gemma3-270m/metadata.json").exists()
    assert (cluster.home / ".local/state/rbee/queen.log").exists()


def test_state_logs_and_caches_are_the_operators_alone(cluster: LocalCluster) -> None:
    """The applied cluster (its token and `${VAR}` values), the cluster token and CA, each
    process's TLS identity, job prompts, logs and models: no other user of the machine may
    read them (directories 0700, files 0600)."""
    state = cluster.home / ".local/state/rbee"
    cache = cluster.home / ".cache/rbee"
    for root in (state, cache):
        assert root.stat().st_mode & 0o777 == 0o700, root
    for path in (
        state / "queen.db",
        state / "queen.log",
        state / "hive-local.log",
        state / "workers" / "local.gemma3-270m.0.log",
        state / "cluster.token",
        state / "tls" / "ca.key",
        state / "tls" / "queen.pem",
        state / "tls" / "hive-local.pem",
        state / "tls" / "workers" / "local.gemma3-270m.0.pem",
        cache / "models" / "gemma3-270m" / "payload",
        cache / "models" / "gemma3-270m" / "metadata.json",
    ):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is {path.stat().st_mode & 0o777:o}"
    opened = [p for p in (*state.rglob("*"), *cache.rglob("*")) if p.stat().st_mode & 0o077]
    assert opened == []


def test_answer_streams_through_the_queen_token_by_token(cluster: LocalCluster) -> None:
    body = {
        "model": "gemma3-270m",
        "messages": [{"role": "user", "content": "Count from one to twenty."}],
        "max_tokens": 48,
        "temperature": 0,
        "stream": True,
    }
    arrivals: list[float] = []
    text: list[str] = []
    with httpx.stream(
        "POST",
        f"{cluster.queen_url}/v1/chat/completions",
        json=body,
        headers=cluster.headers,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-rbee-worker"] == "local.gemma3-270m.0"
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta:
                arrivals.append(time.monotonic())
                text.append(delta)
    assert len(text) >= 5, text
    assert "".join(text).strip()
    # Relayed as it is made: the first token came well before the last one.
    assert arrivals[-1] - arrivals[0] > 0.05


def test_non_streamed_answer_is_one_openai_json(cluster: LocalCluster) -> None:
    response = cluster.chat("Say hello.", max_tokens=8)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].strip()


def test_the_queen_reaches_a_worker_on_its_machine_through_its_socket(
    cluster: LocalCluster,
) -> None:
    """No TLS between two processes of the operator on one machine: the worker serves a Unix
    socket of theirs (0600, in a 0700 directory), where the relay keeps its connections."""
    [worker] = cluster.workers()
    path = Path(worker["socket"])
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert cluster.chat("Say hello.", max_tokens=2).status_code == 200
    # The listening socket and the relay's kept-alive connection, both named by the path.
    on_path = [
        c
        for c in psutil.Process(worker["pid"]).net_connections(kind="unix")
        if c.laddr == str(path)
    ]
    assert len(on_path) >= 2, on_path


def test_rbee_infer_streams_to_the_terminal_and_as_json(cluster: LocalCluster) -> None:
    result = cluster.rbee("infer", "Name a colour.", "--max-tokens", "8", "--json")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["worker"] == "local.gemma3-270m.0"
    assert answer["content"].strip()
    assert answer["time_to_first_token_s"] < answer["elapsed_s"]
    plain = cluster.rbee("infer", "Name a fruit.", "--max-tokens", "8")
    assert plain.stdout.strip()


def test_the_openai_client_unchanged_and_the_tokens_counted(cluster: LocalCluster) -> None:
    client = openai.OpenAI(base_url=f"{cluster.queen_url}/v1", api_key=cluster.token, max_retries=0)
    messages: Any = [{"role": "user", "content": "Name three colours."}]
    before = _tokens_out(cluster)
    answer = client.chat.completions.create(
        model="gemma3-270m", messages=messages, max_tokens=12, temperature=0
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None
    pieces = [
        part.choices[0].delta.content
        for part in client.chat.completions.create(
            model="gemma3-270m", messages=messages, max_tokens=12, temperature=0, stream=True
        )
        if part.choices and part.choices[0].delta.content is not None
    ]
    assert "".join(pieces) == answer.choices[0].message.content  # greedy: the same text
    # The queen counts the answer's usage, and a streamed chunk per token: the stream's once
    # the relay has closed it, which may be just after the client read its last chunk.
    expected = answer.usage.completion_tokens + len(pieces)
    wait_until("the queen to count the stream", lambda: _tokens_out(cluster) - before >= expected)
    assert _tokens_out(cluster) - before == expected
    # `include_usage`: the stream ends with the worker's usage, and the queen counts that.
    before = _tokens_out(cluster)
    chunks = list(
        client.chat.completions.create(
            model="gemma3-270m",
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.completion_tokens == answer.usage.completion_tokens
    assert usage.prompt_tokens == answer.usage.prompt_tokens
    wait_until(
        "the queen to count the stream",
        lambda: _tokens_out(cluster) - before >= usage.completion_tokens,
    )
    assert _tokens_out(cluster) - before == usage.completion_tokens
    assert [m.id for m in client.models.list()] == ["gemma3-270m"]  # the SDK's Model type
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=messages)
    assert missing.value.code == "model_not_found"


def test_the_responses_api_through_the_queen_and_its_tokens_counted(
    cluster: LocalCluster,
) -> None:
    """`/v1/responses` is relayed like chat, streamed or not, and the queen counts the usage
    its answers end with (`output_tokens`), not one token per event."""
    client = openai.OpenAI(base_url=f"{cluster.queen_url}/v1", api_key=cluster.token, max_retries=0)
    common: Any = {
        "model": "gemma3-270m",
        "instructions": "Answer briefly.",
        "input": "Name three colours.",
        "max_output_tokens": 12,
        "temperature": 0,
    }
    before = _tokens_out(cluster)
    whole = client.responses.create(**common)
    assert whole.output_text and whole.usage is not None
    events = list(client.responses.create(stream=True, **common))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    last = events[-1]
    assert last.type == f"response.{whole.status}"
    assert last.type in ("response.completed", "response.incomplete")
    assert last.response.output_text == whole.output_text  # greedy: the same text
    assert last.response.usage == whole.usage
    expected = 2 * whole.usage.output_tokens
    wait_until("the queen to count the stream", lambda: _tokens_out(cluster) - before >= expected)
    assert _tokens_out(cluster) - before == expected
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(**common, previous_response_id=whole.id)
    assert refused.value.code == "unsupported_field"


def test_the_queen_logs_each_request_with_its_id_and_worker(cluster: LocalCluster) -> None:
    body = {
        "model": "gemma3-270m",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
    }
    response = httpx.post(
        f"{cluster.queen_url}/v1/chat/completions",
        json=body,
        headers={**cluster.headers, "x-request-id": "e2e-trace-7"},
        timeout=60,
    )
    assert response.headers["x-request-id"] == "e2e-trace-7"
    log = cluster.home / ".local/state/rbee/queen.log"
    deadline = time.monotonic() + 5
    while "request_id=e2e-trace-7 " not in log.read_text():
        assert time.monotonic() < deadline, "no access log line for the request"
        time.sleep(0.1)
    [line] = [x for x in log.read_text().splitlines() if "request_id=e2e-trace-7 " in x]
    assert "event=request" in line and "model=gemma3-270m" in line
    assert "worker_id=local.gemma3-270m.0" in line and "status=200" in line


def _tokens_out(cluster: LocalCluster) -> float:
    text = cluster.get("/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rbee_queen_tokens_out_total":
                return float(sample.value)
    return 0.0


def test_a_client_that_leaves_frees_its_slot_at_the_worker_within_a_second(
    cluster: LocalCluster,
) -> None:
    [worker] = cluster.workers()
    body = {
        "model": "gemma3-270m",
        "messages": [{"role": "user", "content": "Tell a very long story."}],
        "max_tokens": 400,
        "stream": True,
    }
    as_queen = client_context(cluster.home / ".local/state/rbee/tls/queen.pem")

    def slots_busy() -> int:
        health = httpx.get(f"{worker['url']}/health", timeout=5, verify=as_queen)
        return int(health.json()["slots_busy"])

    with httpx.stream(
        "POST",
        f"{cluster.queen_url}/v1/chat/completions",
        json=body,
        headers=cluster.headers,
        timeout=60,
    ) as response:
        lines = response.iter_lines()
        while not next(lines).startswith('data: {"id"'):
            pass
        assert slots_busy() == 1
    left = time.monotonic()
    while slots_busy() != 0:
        assert time.monotonic() - left < 1.0, "the worker still generates for a gone client"
        time.sleep(0.02)
    [listed] = cluster.workers()
    assert listed["in_flight"] == 0


def test_keys_open_the_queen_beside_the_cluster_token_and_nothing_else_does(
    cluster: LocalCluster,
) -> None:
    """No open mode, on loopback too: every route but /health needs the cluster token (the
    keeper reads the one rbee made on this machine) or a key whose scope allows it; the
    keeper sends $RBEE_API_KEY first."""
    chat = f"{cluster.queen_url}/v1/chat/completions"
    body = {
        "model": "gemma3-270m",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
    }

    def chat_with(headers: dict[str, str]) -> int:
        return httpx.post(chat, json=body, headers=headers, timeout=60).status_code

    assert chat_with({}) == 401  # before any key exists
    created = cluster.rbee("key", "create", "ops", "--scope", "admin")  # with the cluster token
    admin = created.stdout.strip()
    assert admin.startswith("rbee_") and "not shown again" in created.stderr
    app = cluster.rbee("key", "create", "app", "--rpm", "100", env={"RBEE_API_KEY": admin})
    inference = app.stdout.strip()
    # The keeper with a key the queen does not know is refused, with the way out, and no
    # traceback: the key goes first, the cluster token does not paper over it.
    refused = cluster.rbee("status", check=False, env={"RBEE_API_KEY": "rbee_not-a-key"})
    assert refused.returncode != 0
    assert "401" in refused.stderr and "RBEE_API_KEY" in refused.stderr
    assert "Traceback" not in refused.stderr
    narrow = cluster.rbee("status", check=False, env={"RBEE_API_KEY": inference})
    assert narrow.returncode != 0 and "403" in narrow.stderr
    assert "Traceback" not in narrow.stderr
    assert cluster.rbee("status", env={"RBEE_API_KEY": admin}).returncode == 0
    assert cluster.rbee("status").returncode == 0  # the cluster token opens every route
    assert chat_with({}) == 401
    assert chat_with({"authorization": "Bearer rbee_not-a-key"}) == 401
    assert chat_with({"authorization": f"Bearer {inference}"}) == 200
    listed = cluster.rbee("key", "list", "--json", env={"RBEE_API_KEY": admin}).stdout
    assert inference not in listed and admin not in listed
    log = (cluster.home / ".local/state/rbee/queen.log").read_text()
    assert admin not in log and cluster.token not in log
    for name in ("app", "ops"):
        cluster.rbee("key", "revoke", name, env={"RBEE_API_KEY": admin})
    assert chat_with({"authorization": f"Bearer {inference}"}) == 401  # revoked
    assert chat_with({}) == 401  # no key left: still closed
    assert cluster.chat("Hi", max_tokens=2).status_code == 200  # the cluster token


def test_second_plan_is_a_noop(cluster: LocalCluster) -> None:
    result = cluster.rbee("plan", "--detailed-exitcode")
    assert result.returncode == 0
    assert "No changes." in result.stdout


def test_scale_up_spawns_exactly_one_worker(cluster: LocalCluster) -> None:
    cluster.write(replicas=2)
    plan = cluster.rbee("plan", "--detailed-exitcode", check=False)
    assert plan.returncode == 2
    assert "+ worker.local.gemma3-270m[1]" in plan.stdout
    assert "Plan: 1 to add, 0 to change, 0 to destroy." in plan.stdout
    cluster.rbee("apply", "--auto-approve")
    ids = sorted(w["worker_id"] for w in cluster.wait_workers(2))
    assert ids == ["local.gemma3-270m.0", "local.gemma3-270m.1"]


def test_prefix_routing_sends_the_next_turn_where_its_history_is_and_away_when_full(
    cluster: LocalCluster,
) -> None:
    cluster.write(replicas=2, routing="prefix")
    cluster.rbee("apply", "--auto-approve")
    cluster.wait_workers(2)

    def turn(messages: list[dict[str, str]], max_tokens: int = 4) -> tuple[str, str]:
        body = {"model": "gemma3-270m", "messages": messages, "max_tokens": max_tokens}
        response = httpx.post(
            f"{cluster.queen_url}/v1/chat/completions",
            json={**body, "temperature": 0},
            headers=cluster.headers,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        answer = response.json()["choices"][0]["message"]["content"]
        return response.headers["x-rbee-worker"], answer

    chats = [
        [{"role": "system", "content": f"You are guide number {n}. " + "Be brief. " * 20}]
        for n in range(4)
    ]
    placed = {}
    for n, chat in enumerate(chats):
        chat.append({"role": "user", "content": "Where are the bees?"})
        placed[n], answer = turn(chat)
        chat += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}]
    assert len(set(placed.values())) == 2  # least loaded among idle workers: they alternate
    for n, chat in enumerate(chats):  # each next turn where its first one is cached
        assert turn(chat)[0] == placed[n]

    # A worker that holds a prompt but has no free slot is passed over: two long streams of
    # counting go where its start is cached and fill that worker; the next goes to the other.
    counting = {
        "model": "gemma3-270m",
        "prompt": ", ".join(str(n) for n in range(1, 40)) + ",",
        "temperature": 0,
    }

    def complete(**more: Any) -> httpx.Response:
        return httpx.post(
            f"{cluster.queen_url}/v1/completions",
            json={**counting, "max_tokens": 1, **more},
            headers=cluster.headers,
            timeout=60,
        )

    home = complete().headers["x-rbee-worker"]
    reading: list[Iterator[str]] = []
    with contextlib.ExitStack() as streams:
        for _ in range(2):
            response = streams.enter_context(
                httpx.stream(
                    "POST",
                    f"{cluster.queen_url}/v1/completions",
                    json={**counting, "max_tokens": 200, "stream": True},
                    headers=cluster.headers,
                    timeout=60,
                )
            )
            assert response.headers["x-rbee-worker"] == home
            reading.append(response.iter_lines())  # dropped, the iterator closes the stream
            next(reading[-1])
        elsewhere = complete()
        assert elsewhere.status_code == 200
        assert elsewhere.headers["x-rbee-worker"] != home


def test_scale_down_stops_exactly_one_worker(cluster: LocalCluster) -> None:
    before = {w["worker_id"]: w["pid"] for w in cluster.workers()}
    cluster.write(replicas=1)
    cluster.rbee("apply", "--auto-approve")
    after = {w["worker_id"]: w["pid"] for w in cluster.wait_workers(1)}
    assert after == {"local.gemma3-270m.0": before["local.gemma3-270m.0"]}
    assert not psutil.pid_exists(before["local.gemma3-270m.1"])
    assert cluster.rbee("plan", "--detailed-exitcode", check=False).returncode == 0


def test_status_shows_hive_and_worker(cluster: LocalCluster) -> None:
    body = json.loads(cluster.rbee("status", "--json").stdout)
    assert [h["state"] for h in body["hives"]] == ["online"]
    assert [w["worker_id"] for w in body["workers"]] == ["local.gemma3-270m.0"]
    assert body["hives"][0]["model_facts"] == {
        "gemma3-270m": "gemma3 268M Q4_K_M, ctx 32768, no chat template"
    }
    applied = body["applied"]
    assert applied["result"] == "ok" and len(applied["digest"]) == 64
    assert applied["source"] == {"file": str(cluster.config), "commit": None, "dirty": False}
    text = cluster.rbee("status").stdout
    assert f"applied sha256:{applied['digest'][:12]} from {cluster.config}" in text
    assert "local.gemma3-270m.0" in text and "online" in text
    assert "model gemma3-270m  gemma3 268M Q4_K_M, ctx 32768, no chat template" in text


def test_hive_registry_lists_the_local_hive_online(cluster: LocalCluster) -> None:
    [record] = json.loads(cluster.rbee("hive", "list", "--json").stdout)
    assert (record["name"], record["mode"], record["state"]) == ("local", "local", "online")
    assert record["version"] == "0.1.0"
    status = cluster.rbee("hive", "status", "local")
    assert "online" in status.stdout
    missing = cluster.rbee("hive", "get", "nope", check=False)
    assert missing.returncode == 1
    assert "no hive named 'nope'" in missing.stderr


def test_refresh_capabilities_reports_this_machine(cluster: LocalCluster) -> None:
    caps = json.loads(cluster.rbee("hive", "refresh-capabilities", "local", "--json").stdout)
    assert caps["cpu_count"] == os.cpu_count()
    assert caps["ram_total_bytes"] > 0 and "cpu" in caps["backends"]
    [record] = json.loads(cluster.rbee("hive", "list", "--json").stdout)
    assert record["capabilities"] == caps


def test_unknown_model_is_an_openai_404(cluster: LocalCluster) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(
        f"{cluster.queen_url}/v1/chat/completions", json=body, headers=cluster.headers, timeout=10
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_malformed_json_is_a_400(cluster: LocalCluster) -> None:
    response = httpx.post(
        f"{cluster.queen_url}/v1/chat/completions",
        content=b"{not json",
        headers={**cluster.headers, "content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]["message"]
    # 200,000 levels deep: a 400 naming it (it was a RecursionError, a 500), on the relay's
    # path and on the routes Starlette serves.
    deep = b"[" * 200_000 + b"]" * 200_000
    for path in ("/v1/chat/completions", "/v1/plan"):
        response = httpx.post(
            f"{cluster.queen_url}{path}",
            content=deep,
            headers={**cluster.headers, "content-type": "application/json"},
            timeout=10,
        )
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["message"] == "the JSON body is nested too deeply"


def test_a_killed_worker_is_respawned_and_serves_again_without_an_apply(
    cluster: LocalCluster,
) -> None:
    [worker] = cluster.workers()
    os.kill(worker["pid"], signal.SIGKILL)
    killed = time.monotonic()
    statuses = []
    while (response := cluster.chat("hello", max_tokens=4)).status_code != 200:
        # Meanwhile an honest "no worker" (the relay drops a worker that refuses at once).
        statuses.append(response.status_code)
        assert response.json()["error"]["code"] == "no_worker", response.text
        assert time.monotonic() - killed < 15, f"not served again within 15 s: {statuses}"
        time.sleep(0.2)
    [respawned] = cluster.workers()
    assert respawned["pid"] != worker["pid"] and respawned["worker_id"] == worker["worker_id"]

    heal = json.loads(cluster.rbee("history", "--json", "-n", "1").stdout)[0]
    assert (heal["kind"], heal["holder"], heal["result"]) == ("self-heal", "self-heal", "ok")
    assert heal["done"] == ["worker.local.gemma3-270m[0]"]
    assert "spawn" in heal["reasons"]["worker.local.gemma3-270m[0]"]
    assert "local.gemma3-270m.0" in heal["trigger"]
    metrics = cluster.get("/metrics", timeout=5).text
    assert (
        'rbee_queen_self_heal_actions_total{kind="worker",op="create",result="ok"} 1.0' in metrics
    )


def test_after_the_heal_plan_is_clean_and_status_in_sync(cluster: LocalCluster) -> None:
    plan = cluster.rbee("plan", "--detailed-exitcode", check=False)
    assert plan.returncode == 0, plan.stdout
    deadline = time.monotonic() + 35  # the periodic check (30 s) at the latest
    while (status := json.loads(cluster.rbee("status", "--json").stdout))["sync"][
        "state"
    ] != "in_sync":
        assert time.monotonic() < deadline, status["sync"]
        time.sleep(0.5)
    assert status["sync"]["reasons"] == []
    assert "sync   in sync  (self-heal on)" in cluster.rbee("status").stdout


def test_down_leaves_no_process_behind(cluster: LocalCluster) -> None:
    pids = [p.pid for p in cluster.processes()]
    assert len(pids) == 3  # queen, hive, one worker
    result = cluster.rbee("down", timeout=60)
    assert "stopped 1 workers" in result.stdout
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in pids if psutil.pid_exists(pid)] == []
    assert cluster.processes() == []
