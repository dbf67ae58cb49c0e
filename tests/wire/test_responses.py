"""The Responses API as a translation over chat (`rbee.wire.responses`), without a model:
requests in, chat bodies out; hand-written chat answers and chunks in, Responses objects and
events out, each validated by the `openai` package's own types (pydantic, strict)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

from rbee.wire.response_events import ResponseBuilder, sse_event
from rbee.wire.responses import (
    AT_DEFAULT,
    HARMLESS,
    IMPLEMENTED,
    ResponsesRequest,
    unsupported_field,
)

EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


def _request(**body: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "smollm2", "input": "Hi.", **body})


def _chat(**body: Any) -> dict[str, Any]:
    return _request(**body).chat().body


def _input_text(text: str) -> dict[str, str]:
    return {"type": "input_text", "text": text}


def _error(**body: Any) -> str:
    with pytest.raises(ValidationError) as raised:
        _request(**body)
    return str(raised.value.errors()[0]["msg"]).removeprefix("Value error, ")


def test_the_model_reads_every_field_the_policy_lets_through() -> None:
    assert set(ResponsesRequest.model_fields) == IMPLEMENTED | HARMLESS | set(AT_DEFAULT)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("previous_response_id", "resp_1", "rbee keeps no responses (stateless)"),
        ("conversation", "conv_1", "rbee keeps no responses (stateless)"),
        ("store", True, "rbee stores no responses: send store: false"),
        ("background", True, "rbee answers in the request"),
        ("reasoning", {"effort": "low"}, "not supported by rbee"),
        ("truncation", "auto", "rbee does not truncate input"),
        ("include", ["message.output_text.logprobs"], "rbee has none of the extra output"),
        ("top_logprobs", 3, "not supported by rbee"),
        ("stream_options", {"include_obfuscation": True}, "not supported by rbee"),
        ("max_tool_calls", 2, "not supported by rbee"),
        ("prompt", {"id": "pmpt_1"}, "rbee stores no prompt templates"),
        ("messages", [], "not supported by rbee"),  # chat's, not a Responses field
        ("a_field_nobody_defined", 1, "not supported by rbee"),
    ],
)
def test_a_field_rbee_would_ignore_is_refused_naming_it(field: str, value: Any, says: str) -> None:
    message = unsupported_field({"model": "m", "input": "Hi.", field: value})
    assert message is not None and message.startswith(f"{field}: {says}")


def test_harmless_fields_and_defaults_are_accepted() -> None:
    body = {
        "model": "m",
        "input": "Hi.",
        "store": False,
        "background": False,
        "truncation": "disabled",
        "include": [],
        "metadata": {"team": "a"},
        "user": "u-1",
        "service_tier": "auto",
        "previous_response_id": None,
    }
    assert unsupported_field(body) is None
    assert _request(**{k: v for k, v in body.items() if k != "input"}).store is False


def test_a_string_input_and_instructions_are_a_user_and_a_system_message() -> None:
    body = _chat(
        instructions="Answer in French.",
        max_output_tokens=12,
        temperature=0.5,
        top_p=0.9,
        stream=True,
    )
    assert body == {
        "model": "smollm2",
        "stream": True,
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Hi."},
        ],
        "max_tokens": 12,
        "temperature": 0.5,
        "top_p": 0.9,
    }


def test_message_items_keep_their_roles_and_text_parts() -> None:
    items = [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi."}]},
        {  # an earlier answer passed back as it came
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello.", "annotations": []}],
        },
    ]
    assert _chat(input=items)["messages"] == [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
    ]


def test_function_calls_become_one_assistant_turn_and_their_outputs_tool_turns() -> None:
    paris, rome = json.dumps({"city": "Paris"}), json.dumps({"city": "Rome"})
    items = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": paris},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": rome},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": [_input_text("rain")]},
    ]
    translation = _request(input=items).chat()

    def call(call_id: str, arguments: str) -> dict[str, Any]:
        function = {"name": "get_weather", "arguments": arguments}
        return {"id": call_id, "type": "function", "function": function}

    calls = [call("c1", paris), call("c2", rome)]
    assert translation.body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]
    assert translation.origins == ["input.0", "input.1", "input.3", "input.4"]


def test_flat_function_tools_become_chats_nested_ones() -> None:
    body = _chat(tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"})
    function = {k: v for k, v in TOOL.items() if k != "type"}
    assert body["tools"] == [{"type": "function", "function": function}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert _chat(tools=[TOOL], tool_choice="required")["tool_choice"] == "required"
    # Without tools, auto and none ask for nothing: chat gets neither.
    assert "tool_choice" not in _chat(tool_choice="auto")
    assert "tools" not in _chat(tools=[])


@pytest.mark.parametrize(
    ("text_format", "response_format"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True},
            {
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True},
            },
        ),
    ],
)
def test_text_format_becomes_chats_response_format(
    text_format: dict[str, Any], response_format: dict[str, Any] | None
) -> None:
    body = _chat(text={"format": text_format})
    assert body.get("response_format") == response_format


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.content.0: only text parts are supported",
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0.type: 'reasoning' is not"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type: 'item_reference'"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input.0.call_id: Field required"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role: Input should be"),
        ({"input": ""}, "an empty string"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type: 'web_search' is not supported"),
        ({"tool_choice": {"type": "file_search"}}, "'auto', 'none', 'required' or"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "give its `name` and"),
    ],
)
def test_what_rbee_cannot_read_is_an_error_naming_where(body: dict[str, Any], says: str) -> None:
    assert _error(**body).startswith(says) or says in _error(**body)


def test_a_chat_error_is_renamed_as_responses_names_it() -> None:
    translation = _request(
        instructions="Be brief.", input=[{"role": "user", "content": "Hi."}]
    ).chat()
    assert translation.in_responses_terms("messages.1.content: bad") == "input.0.content: bad"
    assert translation.in_responses_terms("messages.0.role: x") == "instructions.role: x"
    assert translation.in_responses_terms("response_format: not supported") == (
        "text.format: not supported"
    )
    assert translation.in_responses_terms("tools: not supported") == "tools: not supported"


def _answer(message: dict[str, Any], reason: str) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": reason}
    return {"id": "chatcmpl-1", "model": "smollm2", "choices": [choice], "usage": USAGE}


def test_a_chat_answer_is_a_response_object() -> None:
    request = _request(instructions="Be brief.", max_output_tokens=20, metadata={"k": "v"})
    answer = ResponseBuilder(request, "smollm2", 1700000000).answer(
        _answer({"content": "Hello there."}, "stop")
    )
    response = Response.model_validate(answer)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.created_at == 1700000000
    assert response.output_text == "Hello there."
    [message] = response.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.status == "completed"
    assert response.instructions == "Be brief." and response.max_output_tokens == 20
    assert response.metadata == {"k": "v"} and response.store is False
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 5)
    assert response.usage.total_tokens == 16
    assert list(answer)[-1] == "usage"  # last: what the queen counts


def test_a_chat_answer_cut_by_max_tokens_is_an_incomplete_response() -> None:
    answer = ResponseBuilder(_request(), "smollm2", 1).answer(_answer({"content": "Hel"}, "length"))
    response = Response.model_validate(answer)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"


def test_a_chat_answers_tool_calls_are_function_call_items() -> None:
    calls = [
        {
            "id": "call_7",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    builder = ResponseBuilder(_request(tools=[TOOL]), "smollm2", 1)
    answer = builder.answer(_answer({"content": None, "tool_calls": calls}, "tool_calls"))
    response = Response.model_validate(answer)
    [call] = response.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == (
        "call_7",
        "get_weather",
        '{"city":"Paris"}',
    )
    assert call.id is not None and call.id.startswith("fc_")
    assert response.tools[0].type == "function" and response.tools[0].name == "get_weather"


def _chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": reason}
    return {"id": "chatcmpl-1", "model": "smollm2", "choices": [choice]}


def _stream(request: ResponsesRequest, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    builder = ResponseBuilder(request, "smollm2", 1)
    events = builder.start()
    for chunk in chunks:
        events += builder.feed(chunk)
    events += builder.finish()
    for event in events:
        EVENT.validate_python(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


TEXT_CHUNKS = [
    _chunk({"role": "assistant"}),
    _chunk({"content": "Hello"}),
    _chunk({"content": " there."}),
    _chunk({}, "stop"),
    {"id": "chatcmpl-1", "model": "smollm2", "choices": [], "usage": USAGE},
]


def test_streamed_text_is_openais_events_in_order() -> None:
    events = _stream(_request(stream=True), TEXT_CHUNKS)
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == [] and events[0]["response"]["usage"] is None
    assert events[2]["item"]["content"] == []  # as it was when added
    assert events[6]["text"] == "Hello there."
    assert events[8]["item"]["status"] == "completed"
    done = Response.model_validate(events[-1]["response"])
    assert done.output_text == "Hello there." and done.status == "completed"
    assert done.usage is not None and done.usage.output_tokens == 5
    item_ids = {event["item_id"] for event in events if "item_id" in event}
    assert item_ids == {done.output[0].id}


def test_a_stream_cut_by_max_tokens_ends_with_response_incomplete() -> None:
    chunks = [_chunk({"content": "Hel"}), _chunk({}, "length")]
    events = _stream(_request(stream=True), chunks)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_an_empty_stream_still_has_its_message() -> None:
    events = _stream(_request(stream=True), [_chunk({"role": "assistant"}), _chunk({}, "stop")])
    done = Response.model_validate(events[-1]["response"])
    assert [item.type for item in done.output] == ["message"]
    assert done.output_text == ""


def test_streamed_tool_calls_are_function_call_items_with_argument_deltas() -> None:
    """As the chat path streams them: text first, then each call's head (its id and name),
    then its arguments in pieces."""

    def call(index: int, **delta: Any) -> dict[str, Any]:
        return _chunk({"tool_calls": [{"index": index, **delta}]})

    def head(call_id: str, arguments: str) -> dict[str, Any]:
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": arguments},
        }

    chunks = [
        _chunk({"role": "assistant"}),
        _chunk({"content": "Let me look."}),
        call(0, **head("call_1", "")),
        call(0, function={"arguments": '{"city":'}),
        call(0, function={"arguments": '"Paris"}'}),
        call(1, **head("call_2", '{"city":"Rome"}')),
        _chunk({}, "tool_calls"),
    ]
    events = _stream(_request(stream=True, tools=[TOOL]), chunks)
    types = [event["type"] for event in events]
    # The text is done before the first call is added.
    assert types.index("response.output_item.done") < types.index(
        "response.function_call_arguments.delta"
    )
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == ['{"city":', '"Paris"}', '{"city":"Rome"}']
    done_args = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["output_index"], e["arguments"]) for e in done_args] == [
        (1, '{"city":"Paris"}'),
        (2, '{"city":"Rome"}'),
    ]
    response = Response.model_validate(events[-1]["response"])
    assert [item.type for item in response.output] == ["message", "function_call", "function_call"]
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.call_id, c.arguments) for c in calls] == [
        ("call_1", '{"city":"Paris"}'),
        ("call_2", '{"city":"Rome"}'),
    ]
    assert response.status == "completed"


def test_a_failed_generation_ends_the_stream_with_response_failed() -> None:
    builder = ResponseBuilder(_request(stream=True), "smollm2", 1)
    builder.start()
    [event] = builder.fail("generation failed: boom")
    EVENT.validate_python(event)
    assert event["type"] == "response.failed" and event["sequence_number"] == 2
    assert event["response"]["error"] == {
        "code": "server_error",
        "message": "generation failed: boom",
    }


def test_each_event_is_named_on_its_own_line() -> None:
    event = {"type": "response.output_text.delta", "sequence_number": 3, "delta": "a\nb"}
    assert sse_event(event) == (
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","sequence_number":3,"delta":"a\\nb"}\n\n'
    )


def test_an_answers_output_items_go_back_as_input_as_the_sdk_dumps_them() -> None:
    """Stateless: the caller sends the last answer's items back with its next turn."""
    call = {"id": "call_7", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    answer = ResponseBuilder(_request(tools=[TOOL]), "smollm2", 1).answer(
        _answer({"content": "Looking.", "tool_calls": [call]}, "tool_calls")
    )
    output = [item.model_dump() for item in Response.model_validate(answer).output]
    result = {"type": "function_call_output", "call_id": "call_7", "output": "42"}
    messages = _chat(input=[{"role": "user", "content": "Hi."}, *output, result])
    assert messages["messages"] == [
        {"role": "user", "content": "Hi."},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Looking."}],
            "tool_calls": [call],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": "42"},
    ]
