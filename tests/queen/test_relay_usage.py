"""What the relay counts against a key's tpm: the usage a worker's answer ends with, chat's
names or the Responses API's, never a usage-looking object the caller wrote into the request
that a Responses object repeats (a tool's schema may hold anything)."""

from __future__ import annotations

import json
from typing import Any

from rbee.queen.serve.relay import _usage_of
from rbee.wire.response_events import ResponseBuilder, sse_event
from rbee.wire.responses import ResponsesRequest

CHAT_USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
FORGED = {
    "type": "function",
    "name": "lookup",
    "parameters": {"usage": {"input_tokens": 0, "output_tokens": 0}, "type": "object"},
}


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _builder() -> ResponseBuilder:
    request = ResponsesRequest.model_validate({"input": "Hi.", "tools": [FORGED]})
    return ResponseBuilder(request, "smollm2", 1)


def test_a_chat_answer_counts_its_usage() -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": '"usage": 1'}}
    answer = {"object": "chat.completion", "choices": [choice], "usage": CHAT_USAGE}
    assert _usage_of(_compact(answer)) == (11, 5)


def test_a_whole_response_counts_its_usage_not_the_echoed_request() -> None:
    message = {"role": "assistant", "content": "Hello."}
    chat = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    answer = _builder().answer({**chat, "usage": CHAT_USAGE})
    assert _usage_of(_compact(answer)) == (11, 5)


def test_a_streamed_response_counts_the_usage_its_last_event_carries() -> None:
    builder = _builder()
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "Hello."}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": CHAT_USAGE},
    ]
    events = builder.start()
    for chunk in chunks:
        events += builder.feed(chunk)
    events += builder.finish()
    wire = [sse_event(event) for event in events]
    # As the relay reads a stream: the first usage found in its chunks, one event each or all.
    usage = None
    for chunk in wire:
        usage = usage or _usage_of(chunk)
    assert usage == (11, 5)
    assert _usage_of(b"".join(wire)) == (11, 5)
    assert _usage_of(b"".join(wire[:-1])) is None  # created, in progress: no usage yet
