"""Tool calls: the model's own format where rbee knows it, else JSON the grammar enforces.

Two forms, both with `required` and named choices held by a grammar, so that such an answer
is always a call whose arguments validate against the tool's parameters:
- **Hermes** (`<tool_call>{"name": …, "arguments": …}</tool_call>`: Qwen 2.5 and 3, Hermes,
  SmolLM3 and most recent open models), when the GGUF's chat template writes it: the tools,
  earlier calls and tool results go through the model's own template, as llama-server does
  with `--jinja`, and the model's calls are read back from its text. Under `auto` the model
  writes freely, calls or words.
- **Generic** (llama.cpp's name), for every other template (SmolLM2's has no tools at all):
  the tools are described in the system message and the answer is one JSON object,
  `{"tool_calls": [{"name": …, "arguments": {…}}]}` to call tools or, under `auto`,
  `{"response": …}` to answer in words. Earlier turns go back the same way: an assistant
  turn's `tool_calls` become the JSON it would have written, and a `tool` message a user turn
  holding `{"tool_response": …}` (such templates seldom take a `tool` role).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rbee.worker.grammar import SchemaError, check_schema, schema_grammar

__all__ = ["MAX_TOOLS", "ToolUse", "generic_turn", "read_turn", "tool_use", "writes_hermes"]

#: OpenAI's own bound on tools per request.
MAX_TOOLS = 128
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def writes_hermes(template: str | None) -> bool:
    """Whether a chat template renders tools and writes Hermes-style calls."""
    return bool(template) and "<tool_call>" in template and "tools" in template  # type: ignore[operator]


@dataclass(frozen=True)
class ToolUse:
    """How one request's answer is constrained and read back."""

    #: The GBNF every answer follows (None: the model writes freely, Hermes under `auto`).
    grammar: str | None
    #: Hermes: the tools go to the model's template; generic: `instructions` describe them.
    hermes: bool
    tools: list[dict[str, Any]]
    instructions: str = ""

    def parse(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """The answer's content and tool calls (OpenAI's shape). Text that is not what was
        asked for (an answer cut by `max_tokens`) is the content as it stands."""
        if self.hermes:
            calls = [_call(found) for found in _HERMES_CALL.findall(text)]
            if not calls or None in calls:
                return text, []
            words = _HERMES_CALL.sub("", text).strip()
            return words or None, [_openai_call(call) for call in calls if call is not None]
        answer = _call(text)
        if answer is None:
            return text, []
        if "response" in answer:
            response = answer["response"]
            return response if isinstance(response, str) else json.dumps(response), []
        return None, [_openai_call(call) for call in answer.get("tool_calls") or []]


def _call(text: str) -> dict[str, Any] | None:
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _openai_call(call: Mapping[str, Any]) -> dict[str, Any]:
    arguments = call.get("arguments", {})
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": call.get("name"),
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def tool_use(
    tools: list[Any] | None,
    tool_choice: Any,
    parallel: bool | None,
    response_schema: Mapping[str, Any] | None = None,
    *,
    hermes: bool = False,
) -> ToolUse | None:
    """The constraint for a request's `tools` and `tool_choice` (None: answer as free text).
    `response_schema` constrains a worded answer (`response_format` with tools: generic form
    only, which can hold both); `hermes`: the model's template writes Hermes calls."""
    choice = tool_choice if tool_choice is not None else ("auto" if tools else "none")
    if choice == "none" or not tools:
        if choice not in ("none", "auto"):
            raise ValueError("tool_choice: names a tool but the request has no tools")
        return None
    if len(tools) > MAX_TOOLS:
        raise ValueError(f"tools: at most {MAX_TOOLS}")
    functions = [_function(i, tool) for i, tool in enumerate(tools)]
    if isinstance(choice, Mapping):
        name = _named(choice)
        functions = [f for f in functions if f["name"] == name]
        if not functions:
            raise ValueError(f"tool_choice.function.name: no tool named {name!r}")
    elif choice not in ("auto", "required"):
        raise ValueError(f"tool_choice: {choice!r} is not one of none, auto, required or a tool")
    defs: dict[str, Any] = {}  # every schema's definitions, gathered at the top
    one_call = {"anyOf": [_call_schema(i, f, defs) for i, f in enumerate(functions)]}
    if hermes and response_schema is None:
        grammar = None if choice == "auto" else _hermes_grammar(one_call, defs, parallel)
        return ToolUse(grammar, True, list(tools))  # the template shows them as they came
    calls = {
        "type": "object",
        "properties": {
            "tool_calls": {
                "type": "array",
                "items": one_call,
                "minItems": 1,
                **({} if parallel is not False else {"maxItems": 1}),
            }
        },
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    listed = json.dumps(functions, indent=1)
    if choice == "auto":
        words = dict(response_schema) if response_schema is not None else {"type": "string"}
        response = {
            "type": "object",
            "properties": {"response": _hoist(words, "response_", defs)},
            "required": ["response"],
            "additionalProperties": False,
        }
        schema: dict[str, Any] = {"anyOf": [calls, response], "$defs": defs}
        form = (
            'Answer with one JSON object: {"tool_calls": [{"name": "<tool>", "arguments": '
            '{…}}]} to call tools, or {"response": "<your answer>"} to answer the user.'
        )
    else:
        schema = {**calls, "$defs": defs}
        form = (
            'Answer with one JSON object calling a tool: {"tool_calls": [{"name": "<tool>", '
            '"arguments": {…}}]}.'
        )
    instructions = f"You can call these tools:\n{listed}\n\n{form}"
    return ToolUse(_grammar(schema), False, [], instructions)


def _grammar(schema: Mapping[str, Any]) -> str:
    try:
        return schema_grammar(schema, "tools")
    except SchemaError as exc:
        raise ValueError(str(exc)) from None


def _hermes_grammar(one_call: dict[str, Any], defs: dict[str, Any], parallel: bool | None) -> str:
    """Calls in `<tool_call>` tags, each one JSON object of `one_call`'s schema."""
    rules = _grammar({**one_call, "$defs": defs}).replace("root ::=", "hermes-json ::=", 1)
    more = "" if parallel is False else ' ("\n" hermes-call)*'
    return (
        f"root ::= hermes-call{more}\n"
        'hermes-call ::= "<tool_call>\\n" hermes-json "\\n</tool_call>"\n' + rules
    )


def read_turn(where: str, message: Mapping[str, Any], content: str) -> dict[str, Any]:
    """An earlier turn with tool calls, or a tool's result, checked and in OpenAI's shape
    with each call's arguments parsed (templates write them as JSON themselves)."""
    if message.get("role") == "tool":
        return {"role": "tool", "tool_call_id": message.get("tool_call_id"), "content": content}
    calls = []
    for i, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ValueError(f"{where}.tool_calls.{i}.function.name: required")
        arguments = function.get("arguments", "{}")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            raise ValueError(f"{where}.tool_calls.{i}.function.arguments: not JSON") from None
        calls.append(
            {
                "id": call.get("id"),
                "type": "function",
                "function": {"name": function["name"], "arguments": parsed},
            }
        )
    return {"role": "assistant", "content": content, "tool_calls": calls}


def generic_turn(message: dict[str, Any]) -> dict[str, Any]:
    """A turn as the generic form writes it (others as they are)."""
    if message["role"] == "tool":
        result = {"tool_call_id": message.get("tool_call_id"), "content": message["content"]}
        return {"role": "user", "content": json.dumps({"tool_response": result})}
    if not message.get("tool_calls"):
        return message
    calls = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"], "id": c["id"]}
        for c in message["tool_calls"]
    ]
    said = json.dumps({"tool_calls": calls})
    content = message["content"]
    return {"role": "assistant", "content": f"{content}\n{said}" if content else said}


def _function(index: int, tool: Any) -> dict[str, Any]:
    where = f"tools.{index}"
    if not isinstance(tool, Mapping) or tool.get("type") != "function":
        raise ValueError(f"{where}.type: only function tools are supported")
    function = tool.get("function")
    if not isinstance(function, Mapping):
        raise ValueError(f"{where}.function: required")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}.function.name: 1 to 64 letters, digits, _ or -")
    parameters = function.get("parameters") or {"type": "object"}
    try:
        check_schema(parameters, f"{where}.function.parameters")
    except SchemaError as exc:
        raise ValueError(str(exc)) from None
    described = {"name": name, "parameters": parameters}
    if isinstance(function.get("description"), str):
        described["description"] = function["description"]
    return described


def _named(choice: Mapping[str, Any]) -> str:
    function = choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise ValueError('tool_choice: {"type": "function", "function": {"name": …}}')
    return name


def _call_schema(index: int, function: Mapping[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    arguments = _hoist(function["parameters"], f"f{index}_", defs)
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _hoist(schema: Any, prefix: str, defs: dict[str, Any]) -> Any:
    """`schema` without its definitions, which go into `defs` renamed with `prefix`, its
    references following them (llama.cpp's converter resolves `#/$defs/…` from the top of
    the whole schema, and not through a list)."""
    if not isinstance(schema, Mapping):
        return schema
    own = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    for name, definition in own.items():
        defs[prefix + name] = _renamed(definition, prefix)
    rest = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
    return _renamed(rest, prefix)


def _renamed(schema: Any, prefix: str) -> Any:
    if isinstance(schema, list):
        return [_renamed(value, prefix) for value in schema]
    if not isinstance(schema, Mapping):
        return schema
    renamed = {}
    for key, value in schema.items():
        if key == "$ref":
            head, _, name = str(value).rpartition("/")
            if head not in ("#/$defs", "#/definitions"):
                raise ValueError(f"$ref: {value!r}: only #/$defs/… in tool parameters")
            value = f"#/$defs/{prefix}{name}"
        renamed[key] = _renamed(value, prefix)
    return renamed
