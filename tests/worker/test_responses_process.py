"""`POST /v1/responses` on a real worker with SmolLM2 (the demo's model, its own chat
template), read by the `openai` package: the same model answers as through chat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.fixtures.model import demo_model_path
from tests.worker.conftest import HEADERS, TOKEN, FakeQueen, Worker, launch_worker

pytestmark = pytest.mark.slow

QUESTION = "Name three colours."
INSTRUCTIONS = "Answer in one short sentence."
EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def smollm2(queen: FakeQueen, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One SmolLM2 worker shared by this module's tests."""
    directory = tmp_path_factory.mktemp("worker")
    worker = launch_worker(queen.url, demo_model_path(), directory, "--threads", "1", slots=1)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def client(smollm2: Worker) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{smollm2.url}/v1", api_key=TOKEN, max_retries=0)


def _post(worker: Worker, body: dict[str, Any]) -> httpx.Response:
    body = {"model": "smollm2", **body}
    return httpx.post(f"{worker.url}/v1/responses", json=body, headers=HEADERS, timeout=60)


def _chat(worker: Worker, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
    url = f"{worker.url}/v1/chat/completions"
    answer: dict[str, Any] = httpx.post(url, json=body, headers=HEADERS, timeout=60).json()
    return answer


def test_a_response_is_the_chat_answer_to_the_same_messages(
    smollm2: Worker, client: openai.OpenAI
) -> None:
    """Greedy: the Responses route and chat give the same text for the same turns, with
    `instructions` as the system message, and the same token counts."""
    response = client.responses.create(
        model="smollm2",
        instructions=INSTRUCTIONS,
        input=QUESTION,
        max_output_tokens=24,
        temperature=0,
    )
    chat = _chat(
        smollm2,
        [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}],
        24,
    )
    assert response.output_text == chat["choices"][0]["message"]["content"]
    assert response.output_text.strip()
    assert response.id.startswith("resp_") and response.model == "gemma3-270m"
    assert response.instructions == INSTRUCTIONS
    assert response.usage is not None
    assert response.usage.input_tokens == chat["usage"]["prompt_tokens"]
    assert response.usage.output_tokens == chat["usage"]["completion_tokens"]
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    # The SDK reads leniently: the body also passes its types strictly.
    raw = _post(smollm2, {"instructions": INSTRUCTIONS, "input": QUESTION, "max_output_tokens": 4})
    Response.model_validate(raw.json())


def test_message_items_with_text_parts_read_as_a_string_input(client: openai.OpenAI) -> None:
    common: Any = {"model": "smollm2", "max_output_tokens": 12, "temperature": 0}
    as_string = client.responses.create(input=QUESTION, **common)
    as_items = client.responses.create(
        input=[
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": QUESTION}],
            }
        ],
        **common,
    )
    assert as_items.output_text == as_string.output_text


def test_a_stream_is_openais_named_events_ending_with_the_usage(
    smollm2: Worker, client: openai.OpenAI
) -> None:
    common: Any = {"model": "smollm2", "input": QUESTION, "max_output_tokens": 24, "temperature": 0}
    whole = client.responses.create(**common)
    events = list(client.responses.create(stream=True, **common))
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert types[-1] == f"response.{whole.status}"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 3  # token by token
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    assert "".join(deltas) == last.response.output_text == whole.output_text
    assert last.response.usage == whole.usage
    # On the wire: each event named by an `event:` line that matches its `type`.
    body = {"model": "smollm2", "input": QUESTION, "max_output_tokens": 3, "stream": True}
    with httpx.stream(
        "POST", f"{smollm2.url}/v1/responses", json=body, headers=HEADERS, timeout=60
    ) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        raw = streamed.read().decode()
    for block in raw.strip().split("\n\n"):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        EVENT.validate_python(event)


def test_max_output_tokens_cuts_the_answer_as_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="smollm2", input=QUESTION, max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 2


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id: rbee keeps no responses"),
        ({"store": True}, "store: rbee stores no responses"),
        ({"background": True}, "background: "),
        ({"reasoning": {"effort": "low"}}, "reasoning: not supported"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type: 'web_search' is not supported"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.content.0: only text parts are supported",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type: 'item_reference'"),
        ({"a_field_nobody_defined": 1}, "a_field_nobody_defined: not supported by rbee"),
    ],
)
def test_what_rbee_does_not_do_is_a_400_naming_it(
    smollm2: Worker, body: dict[str, Any], named: str
) -> None:
    response = _post(smollm2, {"input": QUESTION, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith(named), error["message"]
    assert error["type"] == "invalid_request_error"


def test_the_sdk_sees_a_refusal_as_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="smollm2", input=QUESTION, previous_response_id="resp_1")
    assert refused.value.code == "unsupported_field"


def test_a_required_function_tool_is_a_function_call_item_streamed_or_not(
    client: openai.OpenAI,
) -> None:
    common: Any = {
        "model": "smollm2",
        "input": "What is the weather in Paris?",
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_output_tokens": 64,
        "temperature": 0,
    }
    response = client.responses.create(**common)
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    assert isinstance(json.loads(call.arguments)["city"], str)
    events = list(client.responses.create(stream=True, **common))
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and "".join(deltas) == done[0].arguments == call.arguments
    # The call and its output go back as items, and the model answers in text.
    made = {"type": "function_call", "call_id": call.call_id, "name": call.name}
    answer = client.responses.create(
        model="smollm2",
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {**made, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
        tools=[WEATHER],
        max_output_tokens=24,
        temperature=0,
    )
    assert answer.output_text.strip()


def test_text_format_json_schema_answers_json_matching_it(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model="smollm2",
        input="Pick a colour.",
        text={"format": {"type": "json_schema", "name": "pick", "schema": schema, "strict": True}},
        max_output_tokens=32,
        temperature=0,
    )
    assert json.loads(response.output_text)["colour"] in ("red", "green", "blue")
