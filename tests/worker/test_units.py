"""The worker's parts without the model: chat format choice, flags, refusals, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

import httpx
import llama_cpp
import pytest

from rbee.wire import Heartbeat, WorkerArgs
from rbee.worker.app import create_app
from rbee.worker.engine import chat_format_for, placement, worker_threads
from rbee.worker.heartbeat import NUDGE_GAP_S, HeartbeatSender

CONFIG = WorkerArgs(
    worker_id="w1",
    hive="local",
    model="gemma3-270m",
    model_path="/nowhere/model.gguf",
    worker_binary="cpu",
    host="127.0.0.1",
    port=9001,
    queen_url="http://127.0.0.1:1",
    slots=2,
)


def test_the_gguf_chat_template_wins_over_architecture_and_flag() -> None:
    metadata = {"tokenizer.chat_template": "{{ messages }}", "general.architecture": "gemma3"}
    assert chat_format_for(metadata, "chatml") is None


def test_without_a_template_the_architecture_picks_the_chat_format() -> None:
    assert chat_format_for({"general.architecture": "gemma3"}, None) == "gemma"
    assert chat_format_for({"general.architecture": "llama"}, "chatml") == "llama-2"


def test_an_unknown_architecture_falls_back_to_the_flag() -> None:
    assert chat_format_for({"general.architecture": "rwkv7"}, "chatml") == "chatml"
    assert chat_format_for({}, None) is None


def test_threads_are_given_or_a_share_of_the_cores_on_the_cpu_and_every_core_on_a_gpu() -> None:
    every = len(os.sched_getaffinity(0))
    assert worker_threads(CONFIG.model_copy(update={"threads": 3})) == 3
    assert worker_threads(CONFIG.model_copy(update={"device": "cuda:0"})) == every
    # No worker of CONFIG's queen runs here: alone, the share is every core.
    assert worker_threads(CONFIG.model_copy(update={"queen_url": "http://127.0.0.1:9/none"})) == (
        every
    )


def _client() -> httpx.AsyncClient:
    # No lifespan: the model never starts loading, so the worker stays `loading`.
    transport = httpx.ASGITransport(app=create_app(CONFIG))
    return httpx.AsyncClient(transport=transport, base_url="http://worker")


async def _health_and_refusal() -> tuple[dict[str, object], httpx.Response]:
    async with _client() as client:
        health = (await client.get("/health")).json()
        refused = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
    return health, refused


def test_health_reports_loading_with_every_heartbeat_field() -> None:
    health, _ = asyncio.run(_health_and_refusal())
    assert health["status"] == "ok"
    assert health["service"] == "llm-worker-rbee"
    beat = Heartbeat.model_validate(health)
    assert beat.state == "loading"
    assert (beat.worker_id, beat.slots_total, beat.slots_busy) == ("w1", 2, 0)
    assert beat.url == "http://127.0.0.1:9001"


def test_inference_while_loading_is_a_503_openai_error() -> None:
    _, refused = asyncio.run(_health_and_refusal())
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "loading"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON body"),
        (b"[1, 2]", "must be an object"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"messages": []}', "messages"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}',
            "at most 4 stop strings",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "stop": "%s"}' % (b"s" * 257),
            "at most 256 characters",
        ),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}', "max_tokens"),
    ],
)
def test_a_bad_request_body_is_a_400_openai_error(body: bytes, message: str) -> None:
    async def post() -> httpx.Response:
        async with _client() as client:
            return await client.post("/v1/chat/completions", content=body)

    response = asyncio.run(post())
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]


def test_heartbeats_carry_the_token_and_survive_a_failing_queen() -> None:
    seen: list[httpx.Request] = []

    def queen(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(500 if len(seen) == 1 else 200)

    beat = Heartbeat(
        worker_id="w1",
        hive="local",
        model="m",
        worker_binary="cpu",
        url="http://127.0.0.1:9001",
        pid=1,
        device="cpu",
        state="idle",
        slots_total=1,
        slots_busy=0,
    )
    sender = HeartbeatSender(
        "http://queen/",
        "s3cret",
        lambda: beat,
        interval_s=0.05,
        transport=httpx.MockTransport(queen),
    )

    async def beat_three_times() -> None:
        task = asyncio.create_task(sender.run())
        while len(seen) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(beat_three_times(), 5))
    assert str(seen[0].url) == "http://queen/v1/workers/heartbeat"
    assert seen[0].headers["authorization"] == "Bearer s3cret"
    assert json.loads(seen[2].content) == beat.model_dump()


def test_slots_taken_and_freed_are_told_at_most_every_gap_a_lifecycle_step_at_once() -> None:
    seen: list[float] = []
    beat = Heartbeat(
        worker_id="w1", hive="local", model="m", worker_binary="cpu",
        url="http://127.0.0.1:9001", pid=1, device="cpu", state="idle", slots_total=1,
        slots_busy=0,
    )  # fmt: skip

    def queen(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        return httpx.Response(200)

    sender = HeartbeatSender(
        "http://queen/", "s3cret", lambda: beat, interval_s=60,
        transport=httpx.MockTransport(queen),
    )  # fmt: skip

    async def scenario() -> tuple[int, float, int]:
        task = asyncio.create_task(sender.run())
        while not seen:
            await asyncio.sleep(0.005)
        for _ in range(50):  # fifty requests, each taking and freeing the slot
            sender.nudge()
            await asyncio.sleep(0.004)
        nudged = len(seen)
        sender.poke()  # loaded, draining: at once, whatever the gap
        poked_at = time.monotonic()
        while len(seen) == nudged:
            await asyncio.sleep(0.001)
        waited = seen[-1] - poked_at
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return nudged, waited, len(seen)

    nudged, waited, total = asyncio.run(asyncio.wait_for(scenario(), 10))
    # 0.2 s of nudges: the first beat, then one per NUDGE_GAP_S (0.5 s) at most.
    assert nudged == 1
    assert waited < NUDGE_GAP_S / 2
    assert total == 2


def _args(**flags: Any) -> WorkerArgs:
    return WorkerArgs(
        worker_id="w", hive="h", model="m", queen_url="https://q", model_path="/m.gguf", port=0,
        **flags,
    )  # fmt: skip


def test_a_gpu_worker_offloads_every_layer_to_its_one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert placement(_args(device="cpu")) == {"n_gpu_layers": 0}
    unpinned = placement(_args(device="cuda:1"))
    assert (unpinned["n_gpu_layers"], unpinned["main_gpu"]) == (-1, 1)
    assert unpinned["split_mode"] == llama_cpp.LLAMA_SPLIT_MODE_NONE
    # Pinned by its hive, the worker's GPU is the only one it sees: its index 0.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert placement(_args(device="cuda:1"))["main_gpu"] == 0


def test_a_worker_on_several_devices_splits_as_its_flags_say() -> None:
    two = placement(_args(device="cuda:0,cuda:1", split_mode="row", tensor_split="0.25,0.75"))
    assert (two["n_gpu_layers"], two["split_mode"]) == (-1, llama_cpp.LLAMA_SPLIT_MODE_ROW)
    assert [two["tensor_split"][i] for i in range(3)] == [0.25, 0.75, 0.0]
    # A CPU head spanning a hive keeps its first layers (gpu_layers go to the RPC device)...
    span = placement(_args(device="cpu", rpc="b@10.0.0.2:7836", gpu_layers=16))
    assert (span["n_gpu_layers"], span["split_mode"]) == (16, llama_cpp.LLAMA_SPLIT_MODE_LAYER)
    # ... and its output layer: the logits are made here, not sent over from the last server.
    assert "tensor_buft_overrides" in span and "tensor_buft_overrides" not in two


def test_the_fields_rbee_says_it_implements_are_the_workers_request_fields() -> None:
    from rbee.wire.chat import IMPLEMENTED
    from rbee.worker.chat import ChatRequest as _ChatRequest
    from rbee.worker.chat import CompletionRequest as _CompletionRequest

    assert {*_ChatRequest.model_fields, *_CompletionRequest.model_fields} == IMPLEMENTED
