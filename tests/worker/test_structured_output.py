"""What an app asks of a chat beyond text, on a real worker with SmolLM2: JSON that follows a
schema, tool calls, log-probabilities, several choices (`n`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from rbee.wire import WorkerArgs
from rbee.worker.engine import Engine
from rbee.worker.tools import tool_use
from tests.fixtures.model import demo_model_path, hermes_model_path
from tests.worker.conftest import HEADERS, FakeQueen, Worker, launch_worker

pytestmark = pytest.mark.slow

SLOTS = 3
ASK = [{"role": "user", "content": "Describe a fictional person as JSON."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/n"}, "b": {"$ref": "#/$defs/n"}},
            "required": ["a", "b"],
            "$defs": {"n": {"type": "integer"}},
        },
    },
}
WHERE = [{"role": "user", "content": "What is the weather in Paris?"}]

_NAME = {"type": "string", "maxLength": 24}
#: Each schema feature the grammar enforces, on its own and nested.
SCHEMAS: dict[str, dict[str, Any]] = {
    "nested objects": {
        "type": "object",
        "properties": {
            "name": _NAME,
            "address": {
                "type": "object",
                "properties": {"city": _NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "arrays with bounds": {
        "type": "object",
        "properties": {"hobbies": {"type": "array", "items": _NAME, "minItems": 2, "maxItems": 3}},
        "required": ["hobbies"],
    },
    "enums, numbers, booleans": {
        "type": "object",
        "properties": {
            "role": {"enum": ["admin", "user", "guest"]},
            "age": {"type": "integer"},
            "height": {"type": "number"},
            "active": {"type": "boolean"},
        },
        "required": ["role", "age", "height", "active"],
    },
    "optional and nullable": {
        "type": "object",
        "properties": {"nickname": {"anyOf": [_NAME, {"type": "null"}]}, "email": _NAME},
        "required": ["nickname"],
        "additionalProperties": False,
    },
    "refs and definitions": {
        "type": "object",
        "properties": {
            "friends": {"type": "array", "items": {"$ref": "#/$defs/person"}, "maxItems": 2}
        },
        "required": ["friends"],
        "$defs": {
            "person": {"type": "object", "properties": {"name": _NAME}, "required": ["name"]},
        },
    },
    "formats and constants": {
        "type": "object",
        "properties": {"born": {"type": "string", "format": "date"}, "kind": {"const": "person"}},
        "required": ["born", "kind"],
    },
    "a top-level array of tuples": {
        "type": "array",
        "items": {"type": "array", "prefixItems": [_NAME, {"type": "integer"}]},
        "maxItems": 3,
    },
}


@pytest.fixture(scope="module")
def smol(queen: FakeQueen, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A SmolLM2 worker with three slots, shared by this module's tests."""
    directory: Path = tmp_path_factory.mktemp("smol")
    worker = launch_worker(queen.url, demo_model_path(), directory, "--threads", "1", slots=SLOTS)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def _chat(worker: Worker, **body: Any) -> httpx.Response:
    body = {"messages": ASK, "max_tokens": 200, "temperature": 0, **body}
    return httpx.post(f"{worker.url}/v1/chat/completions", headers=HEADERS, json=body, timeout=120)


def _stream(worker: Worker, **body: Any) -> list[dict[str, Any]]:
    body = {"messages": ASK, "max_tokens": 200, "temperature": 0, **body, "stream": True}
    chunks = []
    with httpx.stream(
        "POST", f"{worker.url}/v1/chat/completions", headers=HEADERS, json=body, timeout=120
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: ") :]))
    return chunks


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    spec = {"name": "answer", "schema": schema, "strict": True}
    return {"type": "json_schema", "json_schema": spec}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_answer_to_a_schema_parses_and_validates(smol: Worker, name: str) -> None:
    schema = SCHEMAS[name]
    for temperature in (0, 1.0):
        response = _chat(
            smol, response_format=_json_schema(schema), temperature=temperature, seed=7
        )
        assert response.status_code == 200, response.text
        [choice] = response.json()["choices"]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_a_streamed_schema_answer_validates_too(smol: Worker) -> None:
    schema = SCHEMAS["nested objects"]
    chunks = _stream(smol, response_format=_json_schema(schema))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    jsonschema.validate(json.loads(text), schema)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_json_at_the_default_sampling_closes_what_it_opens(smol: Worker) -> None:
    # rbee's chat default has a repeat penalty (1.1), which kept SmolLM2 from closing its
    # braces in 5 of 8 answers: JSON answers go without it unless the request asks for one.
    body = {
        "messages": [{"role": "user", "content": "A JSON object describing a cat: name and age."}]
    }
    for seed in range(4):
        response = httpx.post(
            f"{smol.url}/v1/chat/completions",
            headers=HEADERS,
            json={
                **body,
                "max_tokens": 300,
                "seed": seed,
                "response_format": {"type": "json_object"},
            },
            timeout=120,
        )
        [choice] = response.json()["choices"]
        assert choice["finish_reason"] == "stop", (seed, choice)
        assert isinstance(json.loads(choice["message"]["content"]), dict)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "integer", "minimum": 0}, "response_format.json_schema.schema.minimum"),
        (
            {"type": "object", "properties": {"mail": {"type": "string", "format": "email"}}},
            "response_format.json_schema.schema.properties.mail.format",
        ),
        ({"type": "array", "uniqueItems": True}, "response_format.json_schema.schema.uniqueItems"),
        ({"not": {"type": "null"}}, "response_format.json_schema.schema.not"),
    ],
)
def test_a_schema_feature_the_grammar_cannot_enforce_is_a_400_naming_it(
    smol: Worker, schema: dict[str, Any], named: str
) -> None:
    response = _chat(smol, response_format=_json_schema(schema))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith(named)


def _arguments(call: dict[str, Any], tool: dict[str, Any]) -> dict[str, Any]:
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == tool["function"]["name"]
    arguments: dict[str, Any] = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, tool["function"]["parameters"])
    return arguments


@pytest.mark.parametrize(
    ("choice", "tool"),
    [("required", WEATHER), ({"type": "function", "function": {"name": "add"}}, ADD)],
)
def test_a_required_or_named_tool_choice_is_always_a_valid_call(
    smol: Worker, choice: Any, tool: dict[str, Any]
) -> None:
    body = {"messages": WHERE, "tools": [WEATHER, ADD], "tool_choice": choice}
    [answer] = _chat(smol, **body, temperature=1.0, seed=11).json()["choices"]
    assert answer["finish_reason"] == "tool_calls"
    assert answer["message"]["content"] is None
    for call in answer["message"]["tool_calls"]:
        _arguments(call, WEATHER if call["function"]["name"] == "get_weather" else ADD)
    assert answer["message"]["tool_calls"][0]["function"]["name"] == tool["function"]["name"]

    # Streamed the way OpenAI streams calls: the id and name, then the arguments.
    chunks = _stream(smol, **body, parallel_tool_calls=False)
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for delta in chunk["choices"][0]["delta"].get("tool_calls") or []:
            call = calls.setdefault(delta["index"], {"function": {"arguments": ""}})
            call.update({k: v for k, v in delta.items() if k not in ("index", "function")})
            call["function"].setdefault("name", delta["function"].get("name"))
            call["function"]["arguments"] += delta["function"].get("arguments") or ""
    assert list(calls) == [0]  # parallel_tool_calls: false
    _arguments(calls[0], tool)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_answers_in_words_or_calls_and_none_never_calls(smol: Worker) -> None:
    for seed in range(3):
        message = _chat(smol, messages=WHERE, tools=[WEATHER], temperature=1.0, seed=seed).json()
        [answer] = message["choices"]
        if answer["message"].get("tool_calls"):
            assert answer["finish_reason"] == "tool_calls"
            _arguments(answer["message"]["tool_calls"][0], WEATHER)
        else:
            assert isinstance(answer["message"]["content"], str)
    [plain] = _chat(smol, messages=WHERE, tools=[WEATHER], tool_choice="none").json()["choices"]
    assert "tool_calls" not in plain["message"] and plain["message"]["content"]


def test_a_conversation_with_tool_calls_and_results_is_read(smol: Worker) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
    history = [
        *WHERE,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"},
    ]
    response = _chat(smol, messages=history, tools=[WEATHER], max_tokens=400)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "tool_calls")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        ({"tools": [{"type": "code_interpreter"}]}, "tools.0.type"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools.0.function.name"),
        ({"tool_choice": "required", "tools": None}, "tool_choice"),
    ],
)
def test_tools_it_cannot_call_are_a_400_naming_them(
    smol: Worker, body: dict[str, Any], named: str
) -> None:
    response = _chat(smol, messages=WHERE, **{"tools": [WEATHER], **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith(named)


def test_chat_logprobs_describe_the_tokens_of_the_answer(smol: Worker) -> None:
    body = {"max_tokens": 12, "logprobs": True, "top_logprobs": 3}
    [choice] = _chat(smol, **body).json()["choices"]
    content = choice["logprobs"]["content"]
    assert "".join(entry["token"] for entry in content) == choice["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode() == entry["token"]
        top = entry["top_logprobs"]
        assert len(top) == 3 and top == sorted(top, key=lambda t: -t["logprob"])
        # Greedy: the chosen token is the likeliest.
        assert top[0]["token"] == entry["token"] and top[0]["logprob"] == entry["logprob"]
    streamed = _stream(smol, **body)
    tokens = [
        entry["token"]
        for chunk in streamed
        for entry in (chunk["choices"][0]["logprobs"] or {"content": []})["content"]
    ]
    assert tokens == [entry["token"] for entry in content]


def test_completions_logprobs_in_the_legacy_shape(smol: Worker) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 2}
    response = httpx.post(f"{smol.url}/v1/completions", headers=HEADERS, json=body, timeout=60)
    [choice] = response.json()["choices"]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert len(logprobs["token_logprobs"]) == len(logprobs["tokens"])
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)


def test_n_choices_share_the_prompt_and_each_decodes_on_its_own(smol: Worker) -> None:
    one = _chat(smol, max_tokens=16).json()
    three = _chat(smol, max_tokens=16, n=SLOTS).json()
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    # Greedy, so a choice that starts from the copied prompt cells writes what one alone does.
    texts = {c["message"]["content"] for c in three["choices"]}
    assert texts == {one["choices"][0]["message"]["content"]}
    assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    assert three["usage"]["completion_tokens"] == SLOTS * one["usage"]["completion_tokens"]
    sampled = _chat(smol, max_tokens=16, n=2, temperature=1.0, seed=5).json()["choices"]
    assert sampled[0]["message"]["content"] != sampled[1]["message"]["content"]
    chunks = _stream(smol, max_tokens=8, n=2, temperature=1.0)
    finished = {c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]}
    assert finished == {0, 1}


def test_more_choices_than_slots_is_a_400(smol: Worker) -> None:
    response = _chat(smol, n=SLOTS + 1)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message == f"n: at most {SLOTS}, the slots this worker serves"


@pytest.fixture(scope="module")
def hermes(queen: FakeQueen, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker of SmolLM2 under a template that writes Hermes `<tool_call>` tags."""
    directory: Path = tmp_path_factory.mktemp("hermes")
    worker = launch_worker(queen.url, hermes_model_path(), directory, "--threads", "1", slots=1)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_a_hermes_template_gets_its_own_calls_held_to_the_tools(
    hermes: Worker, choice: Any
) -> None:
    body = {"messages": WHERE, "tools": [WEATHER, ADD], "tool_choice": choice}
    [answer] = _chat(hermes, **body, temperature=1.0, seed=2).json()["choices"]
    assert answer["finish_reason"] == "tool_calls"
    [call] = answer["message"]["tool_calls"]  # parallel calls allowed; this model makes one
    _arguments(call, WEATHER)
    chunks = _stream(hermes, **body, parallel_tool_calls=False)
    names = [
        delta["function"]["name"]
        for chunk in chunks
        for delta in chunk["choices"][0]["delta"].get("tool_calls") or []
        if "name" in delta["function"]
    ]
    assert names == ["get_weather"]


def _prompt(path: Path, **params: Any) -> str:
    """The prompt a worker of `path` makes of a chat request's `params` (in process)."""
    config = WorkerArgs.model_validate(
        {
            "worker_id": "w", "hive": "h", "model": "m", "worker_binary": "cpu",
            "model_path": str(path), "url": "http://127.0.0.1:9",
            "queen_url": "http://127.0.0.1:9", "device": "cpu", "slots": 1, "ctx_size": 2048,
            "port": 9,
        }
    )  # fmt: skip
    engine = Engine(config)
    asyncio.run(engine.load())
    try:
        formatted, _ = engine._format("chat", params)
        return engine._model.detokenize(formatted.tokens, True).decode()  # type: ignore[union-attr]
    finally:
        engine.close(10)


HISTORY = [
    *WHERE,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"},
]


def test_tools_calls_and_results_go_through_the_models_own_template() -> None:
    prompt = _prompt(hermes_model_path(), messages=HISTORY, tools=[WEATHER])
    assert f"<tools>\n{json.dumps(WEATHER)}\n</tools>" in prompt
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert f"<|im_start|>assistant\n{call}<|im_end|>" in prompt
    assert "<|im_start|>user\n<tool_response>\n21 degrees\n</tool_response><|im_end|>" in prompt


def test_a_template_without_tools_gets_them_in_the_generic_form() -> None:
    prompt = _prompt(demo_model_path(), messages=HISTORY, tools=[WEATHER])
    assert '"name": "get_weather"' in prompt and '{"tool_calls": [{"name": "<tool>"' in prompt
    said = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call_1"}]}
    assert f"<|im_start|>assistant\n{json.dumps(said)}<|im_end|>" in prompt
    result = {"tool_response": {"tool_call_id": "call_1", "content": "21 degrees"}}
    assert f"<|im_start|>user\n{json.dumps(result)}<|im_end|>" in prompt


def test_hermes_calls_are_read_from_free_text_under_auto() -> None:
    use = tool_use([WEATHER], "auto", None, hermes=True)
    assert use is not None and use.grammar is None
    text = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'  # noqa: E501
    content, [call] = use.parse(text)
    assert content == "Let me look."
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert use.parse("Just words.") == ("Just words.", [])
    assert use.parse("<tool_call>\n{not json\n</tool_call>")[1] == []
