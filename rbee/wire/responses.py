"""OpenAI's Responses API (`POST /v1/responses`), stateless, as a translation over chat.

A Responses request becomes a chat request (`ResponsesRequest.chat`): `instructions` the
system message, input items messages (`function_call` items an assistant turn's `tool_calls`,
`function_call_output` items `tool` turns), flat function tools chat's nested ones,
`text.format` chat's `response_format`, `max_output_tokens` chat's `max_tokens`. The chat
answer, or its chunks, become the Responses object, or its named events
(`rbee.wire.response_events.ResponseBuilder`).

rbee stores nothing: `store` is accepted only as false, and what needs a stored response
(`previous_response_id`, `conversation`, `background`, item references) is a 400 naming it,
as is every field rbee would otherwise ignore (`unsupported_field`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "AT_DEFAULT",
    "HARMLESS",
    "IMPLEMENTED",
    "ChatTranslation",
    "ResponsesRequest",
    "unsupported_field",
]

#: The request fields rbee implements (a test pins them to `ResponsesRequest`).
IMPLEMENTED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "max_output_tokens",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
    }
)
# Fields OpenAI defines as having no effect on the answer: ids of the end user, tags echoed
# back, hints to OpenAI's own prompt cache and tiers. README lists them.
HARMLESS = frozenset(
    {
        "metadata",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "service_tier",
    }
)
# Fields accepted at the value that asks for nothing rbee lacks; any other value is a 400.
AT_DEFAULT: dict[str, tuple[object, ...]] = {
    "store": (False,),
    "background": (False,),
    "truncation": ("disabled",),
    "include": ([],),
    "top_logprobs": (0,),
    "stream_options": ({}, {"include_obfuscation": False}),
}
# Why a field is refused, where a bare "not supported" would leave the caller guessing.
_IGNORED = "not supported by rbee (a field it would otherwise ignore)"
_STATELESS = "rbee keeps no responses (stateless): send the whole conversation as `input`"
_WHY = {
    "store": "rbee stores no responses: send store: false or leave it out",
    "previous_response_id": _STATELESS,
    "conversation": _STATELESS,
    "background": "rbee answers in the request (no background responses to poll)",
    "reasoning": "not supported by rbee (its models have no reasoning settings)",
    "truncation": "rbee does not truncate input: only 'disabled'",
    "include": "rbee has none of the extra output data to include",
    "prompt": "rbee stores no prompt templates: send `instructions` and `input`",
}


def unsupported_field(body: dict[str, Any]) -> str | None:
    """The first field of `body` rbee would otherwise have to ignore, as a 400's message; None
    when every field is implemented, harmless or at its default."""
    for name, value in body.items():
        if name in IMPLEMENTED or name in HARMLESS or value is None:
            continue
        if any(type(value) is type(d) and value == d for d in AT_DEFAULT.get(name, ())):
            continue
        return f"{name}: {_WHY.get(name, _IGNORED)}"
    return None


class _Item(BaseModel):
    # `id` and `status` of an item passed back from an earlier output name it, nothing more.
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _without_nulls(cls, item: Any) -> Any:
        """An output item passed back as an SDK dumped it: its fields given as null ask for
        nothing (any other field still names itself)."""
        if isinstance(item, dict):
            return {name: value for name, value in item.items() if value is not None}
        return item


_TEXT_PARTS = ("input_text", "output_text")


class MessageItem(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]

    @model_validator(mode="after")
    def _text_only(self) -> MessageItem:
        for number, part in enumerate(self.content if isinstance(self.content, list) else ()):
            kind = part.get("type")
            if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
                raise ValueError(
                    f"content.{number}: only text parts are supported ({' or '.join(_TEXT_PARTS)}"
                    f"; got {kind!r}: this model has no projector for images, files or audio)"
                )
        return self

    def text(self) -> str | list[dict[str, str]]:
        """The content as chat takes it: a string, or chat's text parts."""
        if isinstance(self.content, str):
            return self.content
        return [{"type": "text", "text": part["text"]} for part in self.content]


class FunctionCallItem(_Item):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(_Item):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[dict[str, Any]]

    @model_validator(mode="after")
    def _text_only(self) -> FunctionCallOutputItem:
        for number, part in enumerate(self.output if isinstance(self.output, list) else ()):
            if part.get("type") != "input_text" or not isinstance(part.get("text"), str):
                raise ValueError(f"output.{number}: only input_text parts are supported")
        return self

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "\n".join(part["text"] for part in self.output)


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem
_ITEMS: dict[str, type[InputItem]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


class FunctionTool(BaseModel):
    """A function tool, flat as Responses has it (chat nests it under `function`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def chat(self) -> dict[str, Any]:
        function = self.model_dump(exclude={"type"}, exclude_none=True)
        return {"type": "function", "function": function}


class TextFormat(BaseModel):
    """`text.format`: free text, any JSON object, or JSON matching a schema."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _a_schema_is_named(self) -> TextFormat:
        given = self.name or self.schema_ is not None or self.description or self.strict
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("type json_schema: give its `name` and `schema`")
        if self.type != "json_schema" and given:
            raise ValueError("`name`, `schema`, `description` and `strict`: with json_schema only")
        return self

    def chat(self) -> dict[str, Any] | None:
        """Chat's `response_format` (None for free text: chat's default)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        schema = self.model_dump(
            include={"name", "schema_", "description", "strict"}, by_alias=True, exclude_none=True
        )
        return {"type": "json_schema", "json_schema": schema}

    def echo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None


ToolChoice = Literal["auto", "none", "required"] | dict[str, Any]


@dataclass
class ChatTranslation:
    """A chat request body and, for each of its messages, where in the Responses request it
    came from (so that an error the chat path finds names the Responses field)."""

    body: dict[str, Any]
    origins: list[str] = field(default_factory=list)

    def in_responses_terms(self, message: str) -> str:
        """A chat path's error message with the chat field it names renamed as Responses has it."""
        head, sep, rest = message.partition(": ")
        path = head.split(".")
        if path[0] == "messages" and len(path) > 1 and path[1].isdigit():
            index = int(path[1])
            if index < len(self.origins):
                return ".".join([self.origins[index], *path[2:]]) + sep + rest
        if path[0] in _CHAT_NAMES:
            return ".".join([_CHAT_NAMES[path[0]], *path[1:]]) + sep + rest
        return message


_CHAT_NAMES = {"max_tokens": "max_output_tokens", "response_format": "text.format"}


class ResponsesRequest(BaseModel):
    """`POST /v1/responses`, as far as rbee reads it (a field it does not implement is refused
    before this model reads the body: `unsupported_field`; what is left for it to drop is a
    field given as null, which asks for nothing)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # the queen routes by model; a worker serves its own regardless
    input: str | list[InputItem]
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    # Harmless, or accepted at their default only (`unsupported_field` checked the values).
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    store: Literal[False] | None = None
    background: Literal[False] | None = None
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = None
    top_logprobs: Literal[0] | None = None
    stream_options: dict[str, Literal[False]] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _items(cls, value: object) -> object:
        """Each item read by its `type` (a message when it has none, as OpenAI's easy input
        messages), every error naming the item."""
        if isinstance(value, str):
            if not value:
                raise ValueError("an empty string: say something")
            return value
        if not isinstance(value, list) or not value:
            raise ValueError("a string or a non-empty list of input items")
        items: list[InputItem] = []
        for index, item in enumerate(value):
            where = f"input.{index}"
            if not isinstance(item, dict):
                raise ValueError(f"{where}: an input item is an object")
            kind = item.get("type", "message")
            model = _ITEMS.get(kind) if isinstance(kind, str) else None
            if model is None:
                raise ValueError(
                    f"{where}.type: {kind!r} is not supported (one of {sorted(_ITEMS)}; "
                    "rbee keeps no items to reference and runs no built-in tools)"
                )
            try:
                items.append(model.model_validate(item))
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(part) for part in first["loc"])
                message = first["msg"].removeprefix("Value error, ")
                # A part's error names its path itself ("content.1: …").
                named = f"{where}.{loc}: {message}" if loc else f"{where}.{message}"
                raise ValueError(named) from None
        return items

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools(cls, value: object) -> object:
        for index, tool in enumerate(value if isinstance(value, list) else ()):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise ValueError(
                    f"tools.{index}.type: {kind!r} is not supported: rbee runs function tools only "
                    "(none of OpenAI's built-in tools)"
                )
        return value

    @field_validator("tool_choice")
    @classmethod
    def _choice(cls, choice: ToolChoice | None) -> ToolChoice | None:
        if isinstance(choice, dict) and (
            choice.get("type") != "function" or not isinstance(choice.get("name"), str)
        ):
            raise ValueError(
                "'auto', 'none', 'required' or {type: function, name: …} (got "
                f"{choice.get('type')!r}: rbee runs function tools only)"
            )
        return choice

    def chat(self) -> ChatTranslation:
        """This request as a chat request body."""
        translation = ChatTranslation({"model": self.model, "stream": self.stream})
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
            translation.origins.append("instructions")
        if isinstance(self.input, str):
            messages.append({"role": "user", "content": self.input})
            translation.origins.append("input")
        else:
            for index, item in enumerate(self.input):
                where = f"input.{index}"
                if isinstance(item, MessageItem):
                    messages.append({"role": item.role, "content": item.text()})
                elif isinstance(item, FunctionCallOutputItem):
                    output = item.text()
                    messages.append(
                        {"role": "tool", "tool_call_id": item.call_id, "content": output}
                    )
                else:
                    call = {
                        "id": item.call_id,
                        "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments},
                    }
                    last = messages[-1] if messages else None
                    # Calls made in one turn (after its text, if any) are one assistant message.
                    if last is not None and last["role"] == "assistant":
                        last.setdefault("tool_calls", []).append(call)
                        continue
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                translation.origins.append(where)
        body = translation.body
        body["messages"] = messages
        body["max_tokens"] = self.max_output_tokens
        body["temperature"] = self.temperature
        body["top_p"] = self.top_p
        if self.tools:
            body["tools"] = [tool.chat() for tool in self.tools]
            body["parallel_tool_calls"] = self.parallel_tool_calls
        if isinstance(self.tool_choice, dict):
            body["tool_choice"] = {
                "type": "function",
                "function": {"name": self.tool_choice["name"]},
            }
        elif self.tool_choice == "required" or (self.tool_choice and self.tools):
            body["tool_choice"] = self.tool_choice
        if self.text is not None and self.text.format is not None:
            body["response_format"] = self.text.format.chat()
        translation.body = {name: value for name, value in body.items() if value is not None}
        return translation

    def echo(self) -> dict[str, Any]:
        """The request's settings as a Responses object repeats them."""
        text_format = self.text.format if self.text and self.text.format else None
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {},
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": None,
            "store": False,
            "temperature": self.temperature,
            "text": {"format": text_format.echo() if text_format else {"type": "text"}},
            "tool_choice": self.tool_choice or "auto",
            "tools": [tool.model_dump(exclude_none=True) for tool in self.tools or ()],
            "top_p": self.top_p,
            "truncation": "disabled",
            "user": self.user,
        }
