"""What an app built on the `openai` package gets from each server: 41 requests (chat,
completions, tools, structured output, logprobs, n, usage, embeddings, rerank, the Responses
API, error answers), each judged, on rbee and on llama.cpp's llama-server with the same GGUF
(issue 22). Prints a table feature x target and the count of each verdict per target.

    .venv/bin/python bench/openai_compat.py --rbee-local --llama-server \
        [--embedding-model E.gguf] [--reranker-model R.gguf] [--json]
    .venv/bin/python bench/openai_compat.py --rbee URL --key KEY [--model NAME]
        [--embedding-name NAME] [--reranker-name NAME]

(`python -m tests.fixtures.synthetic_bert E.gguf [--rerank]` writes small BERT GGUFs.)

Targets, any together, probed in turn request by request:
- `--llama-server`: llama.cpp's server, built from the llama-cpp-python sdist the worker uses
  (`worker_batching.llama_server()`, cached under ~/.cache/rbee-bench/; a build already
  underway there is waited for, never started twice), on SmolLM2-135M-Instruct with `--jinja`,
  plus one instance with `--embedding` on the embedding model and one with `--reranking` on
  the reranker.
- `--rbee-local`: the cluster `make demo` applies (a queen, a local hive, one worker of two
  slots on SmolLM2) in a temporary HOME, plus a one-slot worker per extra model; probed
  through the queen with the cluster token, then `rbee down`.
- `--rbee URL --key KEY`: a queen already running.

Every answer goes through the `openai` client with `_strict_response_validation`, so the SDK
validates it against its own types (rerank and the error probes, which the SDK has no types
for, are read with httpx and checked by hand). Verdicts:
- `ok`: the SDK parsed the answer and the feature did what was asked (a schema's output parses
  and validates, `tool_choice: required` yields a call with JSON arguments, `n: 2` two
  choices, logprobs are there); for the error probes, a 4xx in OpenAI's error shape.
- `ignored`: a 200 where the feature was not honoured (free text where a tool call or a schema
  was asked, one choice for `n: 2`, no logprobs, a 200 for an unknown model).
- `refused`: a 4xx in OpenAI's error shape (`{"error": {"message": ...}}`): the honest answer
  for an unsupported feature.
- `broken`: a 5xx, a crash, a body the SDK's types refuse (the note then says what the same
  request gives unvalidated, the SDK's default), a 4xx not in OpenAI's error shape or for a
  plain request every endpoint serves (`basic` below), or an answer of the wrong shape.
- `n/a`: the embedding or rerank features without that model.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import llama_cpp
import openai
import pydantic
from openai.types import Completion
from worker_batching import CACHE, Server, llama_server

from tests.fixtures.model import demo_model_path
from tests.fixtures.ports import free_port

Verdict = Literal["ok", "ignored", "refused", "broken", "n/a"]
VERDICTS: tuple[Verdict, ...] = ("ok", "ignored", "refused", "broken", "n/a")
CHAT_MODEL = "smollm2-135m"
Role = Literal["chat", "embedding", "reranker"]
MODEL_NAMES: dict[Role, str] = {
    "chat": CHAT_MODEL,
    "embedding": "embedding",
    "reranker": "reranker",
}

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name"}},
            "required": ["city"],
        },
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK_WEATHER: list[Any] = [{"role": "user", "content": "What is the weather in Paris right now?"}]
PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "pet": {"type": "string", "enum": ["cat", "dog", "none"]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"],
            "additionalProperties": False,
        },
        "hobbies": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "pet", "address", "hobbies"],
    "additionalProperties": False,
}
ASK_PERSON: list[Any] = [
    {"role": "user", "content": "Describe a made-up person: name, age, pet, address, hobbies."}
]
# A 1x1 PNG: an image part for a model without a projector.
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@dataclass
class Outcome:
    verdict: Verdict
    note: str = ""


@dataclass
class Target:
    """One server as an app sees it: for each role (chat, embedding, reranker) the OpenAI base
    URL (…/v1) and the model's name: one queen for rbee, one llama-server per model."""

    name: str
    key: str
    endpoints: dict[Role, tuple[str, str]] = field(default_factory=dict)
    missing: dict[Role, str] = field(default_factory=dict)  # why a role has no endpoint
    strict: bool = True  # the SDK validates each answer against its types
    clients: dict[tuple[str, bool], openai.OpenAI] = field(default_factory=dict)

    def model(self, role: Role = "chat") -> str:
        return self.endpoints[role][1]

    def client(self, role: Role = "chat", strict: bool | None = None) -> openai.OpenAI:
        base = self.endpoints[role][0]
        strict = self.strict if strict is None else strict
        if (base, strict) not in self.clients:
            self.clients[base, strict] = openai.OpenAI(
                base_url=base,
                api_key=self.key,
                max_retries=0,
                timeout=120,
                _strict_response_validation=strict,
            )
        return self.clients[base, strict]

    def raw(self, method: str, path: str, role: Role = "chat", **kwargs: Any) -> httpx.Response:
        """A request the SDK has no method for, with the same credential."""
        headers = {"authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        url = f"{self.endpoints[role][0]}{path}"
        return httpx.request(method, url, headers=headers, timeout=120, **kwargs)


# --- reading answers -------------------------------------------------------------------------


def _error_shape(response: _Answer) -> str | None:
    """`error.message` when the body is in OpenAI's error shape, else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return None


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Answer(Protocol):
    """An HTTP answer: httpx's, or the SDK's own copy of httpx's."""

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def _status_outcome(status: int, response: _Answer, basic: bool) -> Outcome:
    """The verdict of an error status for a valid request."""
    message = _error_shape(response)
    if status >= 500:
        return Outcome("broken", f"{status}: {_short(message or response.text)}")
    if message is None:
        return Outcome("broken", f"{status} not in OpenAI's error shape: {_short(response.text)}")
    if basic:
        return Outcome("broken", f"{status} for a plain request: {_short(message)}")
    return Outcome("refused", f"{status}: {_short(message)}")


def _exception_outcome(exc: Exception, basic: bool) -> Outcome:
    if isinstance(exc, openai.APIResponseValidationError):
        return Outcome("broken", f"the SDK's types refuse the body: {_invalid(exc)}")
    if isinstance(exc, openai.APIStatusError):
        return _status_outcome(exc.status_code, exc.response, basic)
    if isinstance(exc, openai.APIConnectionError):
        return Outcome("broken", f"connection: {_short(repr(exc.__cause__ or exc))}")
    if isinstance(exc, openai.APIError):  # an error event inside a stream
        return Outcome("broken", f"error in the stream: {_short(str(exc))}")
    return Outcome("broken", f"{type(exc).__name__}: {_short(str(exc))}")


def _invalid(exc: openai.APIResponseValidationError) -> str:
    """The fields pydantic found missing or wrong (the first few), for a note."""
    cause = exc.__cause__
    if not isinstance(cause, pydantic.ValidationError):
        return _short(str(cause or exc))
    errors = cause.errors()
    if cause.title.startswith("union["):  # every member's complaints, none the one meant
        members = {str(e["loc"][0]) for e in errors if e["loc"]}
        return f"an event matching none of the SDK's {len(members)} event types"
    found = dict.fromkeys(f"{'.'.join(map(str, e['loc'][-2:]))} {e['type']}" for e in errors)
    return f"{len(errors)} errors: " + _short(", ".join(found), 100)


def _json_arguments(calls: list[tuple[str, str]], names: set[str]) -> Outcome | None:
    """None when every (name, arguments) is a known tool with a JSON object, else broken."""
    for name, arguments in calls:
        if name not in names:
            return Outcome("broken", f"a call of unknown tool {name!r}")
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return Outcome("broken", f"arguments not JSON: {_short(arguments)}")
        if not isinstance(parsed, dict):
            return Outcome("broken", f"arguments not an object: {_short(arguments)}")
    return None


def _calls_outcome(calls: list[tuple[str, str]], text: str, want: str | None) -> Outcome:
    """Tool calls where a call was required (`want`: the named tool, or None for any)."""
    if not calls:
        return Outcome("ignored", f"free text instead of a call: {_short(text)}")
    bad = _json_arguments(calls, {"get_weather", "get_time"})
    if bad is not None:
        return bad
    if want is not None and any(name != want for name, _ in calls):
        return Outcome("ignored", f"called {[n for n, _ in calls]} where {want} was named")
    return Outcome("ok", ", ".join(f"{name}({args})" for name, args in calls))


def _validate(value: Any, schema: dict[str, Any]) -> str | None:
    """Why `value` does not match `schema` (jsonschema when installed), or None."""
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        return _hand_validate(value, schema, "$")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=str)
    return None if not errors else f"{errors[0].json_path}: {errors[0].message}"


def _hand_validate(value: Any, schema: dict[str, Any], where: str) -> str | None:
    kinds: dict[str, type | tuple[type, ...]] = {
        "object": dict, "array": list, "string": str, "integer": int, "number": (int, float)
    }  # fmt: skip
    kind = schema.get("type")
    if kind in kinds and not isinstance(value, kinds[kind]):
        return f"{where}: not {kind}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} not in {schema['enum']}"
    if kind == "object":
        for name in schema.get("required", []):
            if name not in value:
                return f"{where}: {name} missing"
        props = schema.get("properties", {})
        for name, item in value.items():
            if name not in props:
                if schema.get("additionalProperties") is False:
                    return f"{where}: extra {name}"
                continue
            if (why := _hand_validate(item, props[name], f"{where}.{name}")) is not None:
                return why
    if kind == "array":
        for i, item in enumerate(value):
            if (why := _hand_validate(item, schema.get("items", {}), f"{where}[{i}]")) is not None:
                return why
    return None


def _schema_outcome(text: str, finish: str | None, schema: dict[str, Any] | None) -> Outcome:
    """JSON output asked for: an object (matching `schema` when given)."""
    try:
        value = json.loads(text)
    except ValueError:
        cut = " (cut at the token limit)" if finish == "length" else ""
        return Outcome("ignored", f"not JSON{cut}: {_short(text)}")
    if not isinstance(value, dict):
        return Outcome("ignored", f"JSON but not an object: {_short(text)}")
    if schema is not None and (why := _validate(value, schema)) is not None:
        return Outcome("ignored", f"does not match the schema ({why}): {_short(text)}")
    return Outcome("ok", _short(text, 80))


def _sdk_body(response: Any) -> str:
    return _short(json.dumps(response.model_dump(exclude_unset=True)), 90)


# --- the probes ------------------------------------------------------------------------------
# Each takes a Target and returns an Outcome, or raises (the SDK's errors become verdicts).


def _chat(t: Target, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", [{"role": "user", "content": "Say hello in one sentence."}])
    kwargs.setdefault("max_tokens", 24)
    return t.client().chat.completions.create(model=t.model(), **kwargs)


def _text(response: Any) -> Outcome:
    content = response.choices[0].message.content
    if not isinstance(content, str) or not content.strip():
        return Outcome("broken", f"no text: {_sdk_body(response)}")
    return Outcome("ok", _short(content, 60))


@dataclass
class _Streamed:
    """A chat stream read to its end: text and tool calls per choice, the last usage."""

    text: dict[int, str] = field(default_factory=dict)
    calls: dict[int, dict[int, list[str]]] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    logprobs: int = 0
    usage: Any = None
    usage_last: bool = False
    chunks: int = 0

    def call_list(self, choice: int = 0) -> list[tuple[str, str]]:
        return [(name, args) for name, args in self.calls.get(choice, {}).values()]


def _chat_stream(t: Target, **kwargs: Any) -> _Streamed:
    seen = _Streamed()
    kwargs.setdefault("messages", [{"role": "user", "content": "Say hello in one sentence."}])
    kwargs.setdefault("max_tokens", 24)
    stream = t.client().chat.completions.create(model=t.model(), stream=True, **kwargs)
    for chunk in stream:
        seen.chunks += 1
        seen.usage_last = chunk.usage is not None and not chunk.choices
        if chunk.usage is not None:
            seen.usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            seen.text[choice.index] = seen.text.get(choice.index, "") + (delta.content or "")
            for call in delta.tool_calls or []:
                # OpenAI streams a call's id and name once, then its arguments in pieces.
                slot = seen.calls.setdefault(choice.index, {}).setdefault(call.index, ["", ""])
                if call.function is not None:
                    slot[0] += call.function.name or ""
                    slot[1] += call.function.arguments or ""
            if choice.logprobs is not None and choice.logprobs.content:
                seen.logprobs += len(choice.logprobs.content)
            if choice.finish_reason is not None:
                seen.finish[choice.index] = choice.finish_reason
    return seen


def models_list(t: Target) -> Outcome:
    ids = [model.id for model in t.client().models.list()]
    if t.model() not in ids:
        return Outcome("broken", f"{t.model()} not listed: {ids}")
    return Outcome("ok", ", ".join(ids))


def chat_basic(t: Target) -> Outcome:
    return _text(_chat(t))


def chat_stream(t: Target) -> Outcome:
    seen = _chat_stream(t)
    if not seen.text.get(0, "").strip() or 0 not in seen.finish:
        return Outcome("broken", f"{seen.chunks} chunks, no text or no finish_reason")
    return Outcome("ok", f"{seen.chunks} chunks, finish_reason {seen.finish[0]}")


def completions(t: Target) -> Outcome:
    response = t.client().completions.create(
        model=t.model(), prompt="The three primary colours are", max_tokens=16
    )
    if not response.choices or not response.choices[0].text:
        return Outcome("broken", f"no text: {_sdk_body(response)}")
    return Outcome("ok", _short(response.choices[0].text, 60))


def completions_stream(t: Target) -> Outcome:
    text, chunks, finish = "", 0, None
    # Validated here, not by the client: the SDK's `Completion` requires a finish_reason,
    # which OpenAI itself sends as null in every chunk but the last.
    stream = t.client(strict=False).completions.create(
        model=t.model(), prompt="The three primary colours are", max_tokens=16, stream=True
    )
    for chunk in stream:
        chunks += 1
        body: dict[str, Any] = chunk.to_dict()
        for choice in body.get("choices", []):
            choice["finish_reason"] = choice.get("finish_reason") or "stop"
        try:
            Completion.model_validate(body)
        except pydantic.ValidationError as exc:
            return Outcome("broken", f"chunk {chunks} fails the SDK's types: {_short(str(exc))}")
        for choice in chunk.choices:
            text += choice.text
            finish = choice.finish_reason or finish
    if not text or finish is None:
        return Outcome("broken", f"{chunks} chunks, no text or no finish_reason")
    return Outcome("ok", f"{chunks} chunks, finish_reason {finish}")


def system_developer(t: Target) -> Outcome:
    outcome = _text(
        _chat(
            t,
            messages=[
                {"role": "system", "content": "You answer in French."},
                {"role": "developer", "content": "Keep answers short."},
                {"role": "user", "content": "Say hello."},
            ],
        )
    )
    return outcome


def content_parts(t: Target) -> Outcome:
    parts = [{"type": "text", "text": "Say hello"}, {"type": "text", "text": " in one sentence."}]
    return _text(_chat(t, messages=[{"role": "user", "content": parts}]))


def tool_history(t: Target) -> Outcome:
    messages = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny", "temp_c": 21}'},
    ]
    response = _chat(t, messages=messages, max_tokens=32)
    message = response.choices[0].message
    if not (message.content or message.tool_calls):
        return Outcome("broken", f"an empty answer: {_sdk_body(response)}")
    return Outcome("ok", _short(message.content or "a tool call", 60))


def image_part(t: Target) -> Outcome:
    parts = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": PIXEL}},
    ]
    return _expect_refusal(lambda: _chat(t, messages=[{"role": "user", "content": parts}]))


def _expect_refusal(call: Callable[[], Any]) -> Outcome:
    """A request that must be refused: ok for a 4xx in OpenAI's shape, ignored for a 200."""
    try:
        response = call()
    except openai.APIStatusError as exc:
        outcome = _status_outcome(exc.status_code, exc.response, basic=False)
        if outcome.verdict == "refused":
            return Outcome("ok", outcome.note)
        return outcome
    return Outcome("ignored", f"a 200: {_sdk_body(response)}")


def n_two(t: Target) -> Outcome:
    response = _chat(t, n=2, temperature=1.0)
    count = len(response.choices)
    if count != 2:
        return Outcome("ignored", f"{count} choice(s)")
    return Outcome("ok", " | ".join(_short(c.message.content or "", 30) for c in response.choices))


def n_two_stream(t: Target) -> Outcome:
    seen = _chat_stream(t, n=2, temperature=1.0)
    if sorted(seen.text) != [0, 1]:
        return Outcome("ignored", f"choice indices {sorted(seen.text)}")
    return Outcome("ok", f"{seen.chunks} chunks, 2 choices")


def chat_logprobs(t: Target) -> Outcome:
    response = _chat(t, logprobs=True, top_logprobs=3)
    logprobs = response.choices[0].logprobs
    if logprobs is None or not logprobs.content:
        return Outcome("ignored", "no logprobs")
    tops = {len(token.top_logprobs) for token in logprobs.content}
    if tops != {3}:
        return Outcome("ignored", f"top_logprobs of lengths {sorted(tops)} for 3 asked")
    return Outcome("ok", f"{len(logprobs.content)} tokens, 3 alternatives each")


def chat_logprobs_stream(t: Target) -> Outcome:
    seen = _chat_stream(t, logprobs=True, top_logprobs=3)
    if not seen.logprobs:
        return Outcome("ignored", "no logprobs in the chunks")
    return Outcome("ok", f"{seen.logprobs} tokens with logprobs")


def completions_logprobs(t: Target) -> Outcome:
    response = t.client().completions.create(
        model=t.model(), prompt="The three primary colours are", max_tokens=8, logprobs=3
    )
    logprobs = response.choices[0].logprobs
    if logprobs is None:
        return Outcome("ignored", "no logprobs")
    if not logprobs.tokens or not logprobs.token_logprobs or not logprobs.top_logprobs:
        extra = _short(json.dumps(logprobs.model_dump(exclude_unset=True)), 70)
        return Outcome("broken", f"not the completions shape (tokens, token_logprobs): {extra}")
    if len(logprobs.tokens) != len(logprobs.token_logprobs):
        return Outcome("broken", "tokens and token_logprobs differ in length")
    return Outcome("ok", f"{len(logprobs.tokens)} tokens")


def json_object(t: Target) -> Outcome:
    messages = [{"role": "user", "content": "A JSON object describing a cat: name and age."}]
    # Room to close the object: a JSON mode holds the form, not the length of what is written.
    response = _chat(t, messages=messages, max_tokens=400, response_format={"type": "json_object"})
    choice = response.choices[0]
    return _schema_outcome(choice.message.content or "", choice.finish_reason, None)


def _schema_format() -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }


def json_schema(t: Target) -> Outcome:
    response = _chat(t, messages=ASK_PERSON, max_tokens=400, response_format=_schema_format())
    choice = response.choices[0]
    return _schema_outcome(choice.message.content or "", choice.finish_reason, PERSON)


def json_schema_stream(t: Target) -> Outcome:
    seen = _chat_stream(t, messages=ASK_PERSON, max_tokens=400, response_format=_schema_format())
    return _schema_outcome(seen.text.get(0, ""), seen.finish.get(0), PERSON)


def tools_auto(t: Target) -> Outcome:
    response = _chat(t, messages=ASK_WEATHER, max_tokens=64, tools=[WEATHER], tool_choice="auto")
    message = response.choices[0].message
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    if not calls:  # auto may answer in text
        return Outcome("ok", f"text: {_short(message.content or '', 60)}")
    return _json_arguments(calls, {"get_weather"}) or Outcome("ok", f"{len(calls)} call(s)")


def _tools(t: Target, choice: Any, stream: bool, **kwargs: Any) -> Outcome:
    want = choice["function"]["name"] if isinstance(choice, dict) else None
    kwargs.update(messages=ASK_WEATHER, max_tokens=64, tools=[WEATHER, TIME], tool_choice=choice)
    if stream:
        seen = _chat_stream(t, **kwargs)
        return _calls_outcome(seen.call_list(), seen.text.get(0, ""), want)
    response = _chat(t, **kwargs)
    message = response.choices[0].message
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    return _calls_outcome(calls, message.content or "", want)


NAMED = {"type": "function", "function": {"name": "get_weather"}}


def tools_required(t: Target) -> Outcome:
    return _tools(t, "required", stream=False)


def tools_required_stream(t: Target) -> Outcome:
    return _tools(t, "required", stream=True)


def tools_named(t: Target) -> Outcome:
    return _tools(t, NAMED, stream=False)


def tools_named_stream(t: Target) -> Outcome:
    return _tools(t, NAMED, stream=True)


def parallel_tool_calls(t: Target) -> Outcome:
    # Parallel calls are allowed, not forced: ok is a valid call (the count is in the note).
    return _tools(t, "required", stream=False, parallel_tool_calls=True)


def include_usage(t: Target) -> Outcome:
    seen = _chat_stream(t, stream_options={"include_usage": True})
    if seen.usage is None:
        return Outcome("ignored", "no usage chunk")
    if not seen.usage_last:
        return Outcome("broken", "usage not in a last chunk without choices")
    return Outcome("ok", f"completion_tokens {seen.usage.completion_tokens}")


def usage(t: Target) -> Outcome:
    got = _chat(t).usage
    if got is None:
        return Outcome("broken", "no usage")
    if got.total_tokens != got.prompt_tokens + got.completion_tokens or not got.prompt_tokens:
        return Outcome("broken", f"inconsistent usage: {got}")
    return Outcome("ok", f"{got.prompt_tokens} + {got.completion_tokens}")


def seed(t: Target) -> Outcome:
    answers = {
        _chat(t, seed=1234, temperature=1.0, max_tokens=24).choices[0].message.content
        for _ in range(2)
    }
    if len(answers) != 1:
        return Outcome("ignored", "two different answers for the same seed")
    return Outcome("ok", "the same answer twice")


def stop(t: Target) -> Outcome:
    # The stop string is cut from the greedy answer itself, so it is sure to come up.
    ask = [{"role": "user", "content": "Write two sentences about bees."}]
    full = _chat(t, messages=ask, temperature=0, max_tokens=32).choices[0].message.content or ""
    if len(full) < 12:
        return Outcome("broken", f"greedy answer too short to pick a stop string: {full!r}")
    word = full[len(full) // 2 : len(full) // 2 + 3]
    choice = _chat(t, messages=ask, temperature=0, max_tokens=32, stop=[word]).choices[0]
    text = choice.message.content or ""
    if word in text or choice.finish_reason != "stop":
        return Outcome("ignored", f"stop {word!r}: {_short(text, 60)} ({choice.finish_reason})")
    return Outcome("ok", f"stopped before {word!r}")


def max_completion_tokens(t: Target) -> Outcome:
    ask = [{"role": "user", "content": "Write a long story about bees."}]
    response = _chat(t, messages=ask, max_tokens=openai.omit, max_completion_tokens=5)
    choice = response.choices[0]
    used = response.usage.completion_tokens if response.usage else None
    if choice.finish_reason != "length" or (used is not None and used > 5):
        return Outcome("ignored", f"finish_reason {choice.finish_reason}, {used} tokens")
    return Outcome("ok", f"{used} tokens, finish_reason length")


# Embeddings and rerank: against the embedding model (n/a without one).


def _embed(t: Target, **kwargs: Any) -> Any:
    return t.client("embedding").embeddings.create(model=t.model("embedding"), **kwargs)


def _vectors(response: Any, count: int) -> Outcome:
    data = sorted(response.data, key=lambda d: d.index)
    if [d.index for d in data] != list(range(count)):
        return Outcome("broken", f"indices {[d.index for d in data]} for {count} inputs")
    dims = {len(d.embedding) for d in data}
    if len(dims) != 1 or 0 in dims:
        return Outcome("broken", f"vector lengths {sorted(dims)}")
    if not all(math.isfinite(x) for d in data for x in d.embedding):
        return Outcome("broken", "a vector with NaN or inf")
    note = f"{count} x {dims.pop()} floats"
    if response.usage is None or not response.usage.prompt_tokens:
        return Outcome("broken", f"{note}, no usage.prompt_tokens")
    return Outcome("ok", f"{note}, {response.usage.prompt_tokens} tokens")


def embed_string(t: Target) -> Outcome:
    return _vectors(_embed(t, input="A bee in a hive.", encoding_format="float"), 1)


def embed_list(t: Target) -> Outcome:
    inputs = ["A bee in a hive.", "The queen lays eggs.", "Workers gather nectar."]
    return _vectors(_embed(t, input=inputs, encoding_format="float"), 3)


def embed_base64(t: Target) -> Outcome:
    # Unvalidated: the SDK types `embedding` as floats and decodes base64 only when it chose
    # the format itself, so an app asking for base64 gets the string; checked here by hand.
    text = "A bee in a hive."
    floats = _embed(t, input=text, encoding_format="float").data[0].embedding
    lenient = t.client("embedding", strict=False).embeddings
    packed = lenient.create(model=t.model("embedding"), input=text, encoding_format="base64")
    item = packed.data[0]
    if item.index != 0 or not isinstance(item.embedding, str):
        return Outcome("ignored", f"not a base64 string: {_sdk_body(packed)}")
    raw = base64.b64decode(item.embedding)
    vector = struct.unpack(f"<{len(raw) // 4}f", raw)
    if (
        len(vector) != len(floats)
        or max(abs(a - b) for a, b in zip(vector, floats, strict=True)) > 1e-4
    ):
        return Outcome("broken", "the base64 vector differs from the float one")
    return Outcome("ok", f"{len(vector)} float32, equal to the float answer")


def embed_tokens(t: Target) -> Outcome:
    return _vectors(_embed(t, input=[[1, 2, 3, 4], [5, 6, 7]], encoding_format="float"), 2)


def embed_dimensions(t: Target) -> Outcome:
    try:
        response = _embed(t, input="A bee in a hive.", dimensions=8, encoding_format="float")
    except openai.APIStatusError as exc:
        return _status_outcome(exc.status_code, exc.response, basic=False)
    size = len(response.data[0].embedding)
    if size != 8:
        return Outcome("ignored", f"{size} floats for dimensions 8")
    return Outcome("ok", "8 floats")


def rerank(t: Target) -> Outcome:
    body = {
        "model": t.model("reranker"),
        "query": "Where does a bee live?",
        "documents": ["A bee lives in a hive.", "Paris is in France.", "Bees make honey."],
        "top_n": 2,
    }
    response = t.raw("POST", "/rerank", "reranker", json=body)
    if response.status_code != 200:
        return _status_outcome(response.status_code, response, basic=False)
    results = response.json().get("results")
    if not isinstance(results, list) or not results:
        return Outcome("broken", f"no results: {_short(response.text)}")
    if not all(isinstance(r.get("relevance_score"), float | int) for r in results):
        return Outcome("broken", f"results without relevance_score: {_short(response.text)}")
    if len(results) != 2:
        return Outcome("ignored", f"{len(results)} results for top_n 2")
    return Outcome("ok", f"top {results[0].get('index')}")


# The Responses API.


def _respond(t: Target, **kwargs: Any) -> Any:
    kwargs.setdefault("input", "Say hello in one sentence.")
    kwargs.setdefault("max_output_tokens", 32)
    return t.client().responses.create(model=t.model(), **kwargs)


def responses(t: Target) -> Outcome:
    response = _respond(t, instructions="You answer in one short sentence.")
    if not response.output_text.strip():
        return Outcome("broken", f"no output_text: {_sdk_body(response)}")
    return Outcome("ok", _short(response.output_text, 60))


def responses_stream(t: Target) -> Outcome:
    kinds: list[str] = []
    text = ""
    for event in _respond(t, instructions="You answer in one short sentence.", stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    if not text or "response.completed" not in kinds:
        return Outcome("broken", f"events {sorted(set(kinds))}")
    return Outcome("ok", f"{len(kinds)} events")


def responses_tools(t: Target) -> Outcome:
    tool = {"type": "function", **WEATHER["function"]}
    response = _respond(
        t, input=ASK_WEATHER[0]["content"], tools=[tool], tool_choice="required",
        max_output_tokens=200,
    )  # fmt: skip
    calls = [(i.name, i.arguments) for i in response.output if i.type == "function_call"]
    return _calls_outcome(calls, response.output_text, None)


def responses_schema(t: Target) -> Outcome:
    text = {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}
    response = _respond(t, input=ASK_PERSON[0]["content"], text=text, max_output_tokens=400)
    return _schema_outcome(response.output_text, None, PERSON)


# Error answers.


def unknown_route(t: Target) -> Outcome:
    response = t.raw("GET", "/no-such-route")
    if response.status_code != 404:
        return Outcome("broken", f"{response.status_code} for an unknown route")
    if _error_shape(response) is None:
        return Outcome("broken", f"404 not in OpenAI's error shape: {_short(response.text)}")
    return Outcome("ok", "404")


def malformed_json(t: Target) -> Outcome:
    headers = {"content-type": "application/json"}
    response = t.raw("POST", "/chat/completions", content=b'{"model": ', headers=headers)
    if response.status_code == 200:
        return Outcome("ignored", "a 200")
    outcome = _status_outcome(response.status_code, response, basic=False)
    if outcome.verdict == "refused":
        return Outcome("ok", outcome.note)
    return outcome


def unknown_model(t: Target) -> Outcome:
    outcome = _expect_refusal(
        lambda: t.client().chat.completions.create(
            model="no-such-model", messages=ASK_WEATHER, max_tokens=4
        )
    )
    if outcome.verdict == "ok" and not outcome.note.startswith("404"):
        return Outcome("ok", f"{outcome.note} (OpenAI answers 404)")
    return outcome


@dataclass(frozen=True)
class Feature:
    name: str
    probe: Callable[[Target], Outcome]
    basic: bool = False  # a 4xx is broken: every OpenAI endpoint serves this
    role: Role = "chat"  # the model it is asked of


FEATURES = [
    Feature("models list", models_list, basic=True),
    Feature("chat", chat_basic, basic=True),
    Feature("chat, streamed", chat_stream, basic=True),
    Feature("completions", completions, basic=True),
    Feature("completions, streamed", completions_stream, basic=True),
    Feature("system + developer roles", system_developer),
    Feature("content as text parts", content_parts),
    Feature("assistant tool_calls + tool message", tool_history),
    Feature("image part, text-only model (400)", image_part),
    Feature("n=2", n_two),
    Feature("n=2, streamed", n_two_stream),
    Feature("chat logprobs + top_logprobs", chat_logprobs),
    Feature("chat logprobs, streamed", chat_logprobs_stream),
    Feature("completions logprobs", completions_logprobs),
    Feature("response_format json_object", json_object),
    Feature("response_format json_schema", json_schema),
    Feature("json_schema, streamed", json_schema_stream),
    Feature("tools, tool_choice auto", tools_auto),
    Feature("tools, tool_choice required", tools_required),
    Feature("tools required, streamed", tools_required_stream),
    Feature("tools, tool_choice named", tools_named),
    Feature("tools named, streamed", tools_named_stream),
    Feature("parallel_tool_calls", parallel_tool_calls),
    Feature("stream_options.include_usage", include_usage),
    Feature("usage", usage, basic=True),
    Feature("seed", seed),
    Feature("stop", stop, basic=True),
    Feature("max_completion_tokens", max_completion_tokens),
    Feature("embeddings, string", embed_string, role="embedding"),
    Feature("embeddings, list", embed_list, role="embedding"),
    Feature("embeddings, base64", embed_base64, role="embedding"),
    Feature("embeddings, token arrays", embed_tokens, role="embedding"),
    Feature("embeddings, dimensions", embed_dimensions, role="embedding"),
    Feature("rerank", rerank, role="reranker"),
    Feature("responses", responses),
    Feature("responses, streamed", responses_stream),
    Feature("responses, function tools", responses_tools),
    Feature("responses, text.format json_schema", responses_schema),
    Feature("unknown route (404)", unknown_route),
    Feature("malformed JSON (400)", malformed_json),
    Feature("unknown model (404)", unknown_model),
]


def probe(target: Target, feature: Feature) -> Outcome:
    """One feature on one target, every failure turned into a verdict."""
    if feature.role not in target.endpoints:
        return Outcome("n/a", target.missing.get(feature.role, f"no --{feature.role}-model"))
    try:
        return feature.probe(target)
    except openai.APIResponseValidationError as exc:
        outcome = _exception_outcome(exc, feature.basic)
        # How far an app gets that does not validate: the SDK's default.
        lenient = probe(dataclasses.replace(target, strict=False), feature)
        return Outcome("broken", f"{outcome.note}; unvalidated: {lenient.verdict}, {lenient.note}")
    except Exception as exc:
        return _exception_outcome(exc, feature.basic)


# --- the targets -----------------------------------------------------------------------------


def _llama_server_binary(wait_s: float = 3600) -> Path:
    """llama_server(), after a build another process has underway finished (its cache folder is
    made before the build and the binary copied in last): never a second build."""
    binary = CACHE / f"llama-server-{llama_cpp.__version__}" / "llama-server"
    deadline = time.monotonic() + wait_s
    if binary.parent.exists() and not binary.exists():
        print(f"waiting for the llama-server build underway ({binary})", file=sys.stderr)
        while not binary.exists() or time.time() - binary.stat().st_mtime < 5:
            if time.monotonic() > deadline:
                raise SystemExit(f"no {binary} after {wait_s:.0f} s")
            time.sleep(10)
    return llama_server()


@contextlib.contextmanager
def llama_server_target(extra: dict[Role, Path], logs: Path, threads: int) -> Iterator[Target]:
    """llama-server on the chat model with `--jinja`, and one more per extra model (with
    `--embedding` or `--reranking`), as llama.cpp serves each kind."""
    binary = _llama_server_binary()
    models: list[tuple[Role, Path, list[str]]] = [
        ("chat", demo_model_path(), ["--jinja", "-np", "2", "-c", "4096"])
    ]
    flags: dict[Role, list[str]] = {"embedding": ["--embedding"], "reranker": ["--reranking"]}
    models += [(role, path, flags[role]) for role, path in extra.items()]
    target = Target("llama-server", "none")
    servers: list[Server] = []
    try:
        for role, path, more in models:
            port = free_port()
            argv = [str(binary), "-m", str(path), "--alias", MODEL_NAMES[role], *more,
                    "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
                    "--no-webui"]  # fmt: skip
            servers.append(Server(f"llama-server {role}", argv, port, logs / f"{role}.log"))
            target.endpoints[role] = (f"{servers[-1].url}/v1", MODEL_NAMES[role])
        yield target
    finally:
        for server in servers:
            server.stop()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cluster_yaml(queen: str, hive_port: int, extra: dict[Role, Path]) -> str:
    """The demo's cluster (a worker of two slots on SmolLM2) and a one-slot worker per extra
    model."""
    models = [(CHAT_MODEL, demo_model_path(), 2, 2048)]
    models += [(MODEL_NAMES[role], path, 1, 512) for role, path in extra.items()]
    lines = ["version: 1", f'queen: {{url: "{queen}"}}',
             f"hives: [{{name: local, host: 127.0.0.1, port: {hive_port}}}]",
             "worker_binaries: [{name: cpu, backend: cpu}]", "models:"]  # fmt: skip
    for name, path, _, _ in models:
        lines.append(f'  - {{name: {name}, source: "file://{path}", sha256: {_sha256(path)}}}')
    lines.append("deployments:")
    for name, _, slots, ctx in models:
        lines.append(
            f"  - {{model: {name}, worker: cpu, hives: [local], replicas: 1, slots: {slots}, "
            f"device: cpu, ctx_size: {ctx}}}"
        )
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def rbee_local_target(extra: dict[Role, Path], home: Path) -> Iterator[Target]:
    """The demo's cluster in a temporary HOME, probed through the queen, then `rbee down`.
    When the extra models do not deploy, the chat model alone is, and their rows say why."""
    queen = f"http://127.0.0.1:{free_port()}"
    config = home / "cluster.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    env["HOME"] = str(home)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "rbee.cli", *args, "-f", str(config)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)

    target = Target("rbee", "")
    try:
        config.write_text(_cluster_yaml(queen, free_port(), extra))
        applied = run("apply", "--auto-approve")
        if applied.returncode != 0 and extra:
            why = _short((applied.stderr or applied.stdout).strip().splitlines()[-1], 100)
            print(f"rbee apply with {sorted(extra)} failed: {why}", file=sys.stderr)
            target.missing = dict.fromkeys(extra, f"did not deploy: {why}")
            extra = {}
            config.write_text(_cluster_yaml(queen, free_port(), extra))
            applied = run("apply", "--auto-approve")
        if applied.returncode != 0:
            raise SystemExit(f"rbee apply failed:\n{applied.stdout}\n{applied.stderr}")
        target.key = (home / ".local/state/rbee/cluster.token").read_text().strip()
        for role in ("chat", *extra):
            target.endpoints[role] = (f"{queen}/v1", MODEL_NAMES[role])
        yield target
    finally:
        run("down")


# --- the table -------------------------------------------------------------------------------


def _table(targets: list[str], results: dict[str, dict[str, Outcome]]) -> str:
    width = max(len(f.name) for f in FEATURES)
    lines = [f"| {'feature':<{width}} | " + " | ".join(targets) + " |"]
    lines.append(f"|{'-' * (width + 2)}|" + "|".join("-" * (len(n) + 2) for n in targets) + "|")
    for feature in FEATURES:
        cells = [f"{results[n][feature.name].verdict:<{len(n)}}" for n in targets]
        lines.append(f"| {feature.name:<{width}} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| verdict | " + " | ".join(targets) + " |")
    lines.append("|---|" + "---|" * len(targets))
    for verdict in VERDICTS:
        counts = [sum(o.verdict == verdict for o in results[n].values()) for n in targets]
        lines.append(f"| {verdict} | " + " | ".join(str(c) for c in counts) + " |")
    lines.append("")
    for name in targets:
        lines.append(f"{name}:")
        for feature in FEATURES:
            outcome = results[name][feature.name]
            lines.append(f"  {outcome.verdict:<8} {feature.name}: {outcome.note}")
    return "\n".join(lines)


def _targets(args: argparse.Namespace, logs: Path, stack: contextlib.ExitStack) -> list[Target]:
    """The targets named on the command line, started (and stopped when `stack` closes)."""
    extra: dict[Role, Path] = {}
    if args.embedding_model:
        extra["embedding"] = args.embedding_model
    if args.reranker_model:
        extra["reranker"] = args.reranker_model
    targets: list[Target] = []
    if args.rbee:
        base = args.rbee.rstrip("/") + "/v1"
        remote = Target("rbee", args.key, endpoints={"chat": (base, args.model)})
        if args.embedding_name:
            remote.endpoints["embedding"] = (base, args.embedding_name)
        if args.reranker_name:
            remote.endpoints["reranker"] = (base, args.reranker_name)
        targets.append(remote)
    if args.rbee_local:
        home = logs / "rbee-home"
        home.mkdir()
        targets.append(stack.enter_context(rbee_local_target(extra, home)))
        if args.rbee:
            targets[-1].name = "rbee-local"
    if args.llama_server:
        targets.append(stack.enter_context(llama_server_target(extra, logs, args.threads)))
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", action="store_true", help="start and probe it")
    parser.add_argument("--rbee-local", action="store_true", help="start the demo cluster")
    parser.add_argument("--rbee", metavar="URL", help="a running queen (its base URL)")
    parser.add_argument("--key", default="", help="the API key or cluster token for --rbee")
    parser.add_argument("--model", default=CHAT_MODEL, help="the chat model's name at --rbee")
    parser.add_argument("--embedding-name", help="the embedding model's name at --rbee")
    parser.add_argument("--reranker-name", help="the reranker's name at --rbee")
    parser.add_argument("--embedding-model", type=Path, help="an embedding GGUF")
    parser.add_argument("--reranker-model", type=Path, help="a reranker GGUF (rank pooling)")
    parser.add_argument("--threads", type=int, default=2, help="llama-server's threads")
    parser.add_argument("--json", action="store_true", help="print JSON, not the table")
    args = parser.parse_args()
    if not (args.llama_server or args.rbee_local or args.rbee):
        parser.error("name a target: --llama-server, --rbee-local or --rbee URL")

    logs = Path(tempfile.mkdtemp(prefix="rbee-bench-compat-"))
    results: dict[str, dict[str, Outcome]] = {}
    with contextlib.ExitStack() as stack:
        targets = _targets(args, logs, stack)
        for feature in FEATURES:
            for target in targets:
                started = time.monotonic()
                outcome = probe(target, feature)
                results.setdefault(target.name, {})[feature.name] = outcome
                print(
                    f"{target.name:>12} {feature.name:<38} {outcome.verdict:<8} "
                    f"{time.monotonic() - started:5.1f} s  {outcome.note}",
                    file=sys.stderr,
                )
    names = list(results)
    if args.json:
        body = {
            "targets": names,
            "features": [
                {"name": f.name, **{n: vars(results[n][f.name]) for n in names}} for f in FEATURES
            ],
            "counts": {
                n: {v: sum(o.verdict == v for o in results[n].values()) for v in VERDICTS}
                for n in names
            },
            "llama_cpp_python": llama_cpp.__version__,
            "openai": openai.__version__,
        }
        print(json.dumps(body, indent=2))
        return
    print(
        f"\nSmolLM2-135M-Instruct Q4_1 ({CHAT_MODEL}); embedding model: "
        f"{args.embedding_model or 'none'}; reranker: {args.reranker_model or 'none'}; "
        f"openai {openai.__version__}; llama.cpp of llama-cpp-python {llama_cpp.__version__}; "
        f"logs: {logs}\n"
    )
    print(_table(names, results))


if __name__ == "__main__":
    main()
