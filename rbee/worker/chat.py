"""The worker's OpenAI request bodies: chat and completions, as the engine takes them.

A field rbee does not implement is refused before these models read a body
(`rbee.wire.chat.unsupported_field`); the models then check every value they take.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rbee.worker.batch import MAX_TOP_LOGPROBS
from rbee.worker.tools import read_turn

__all__ = ["ChatRequest", "CompletionRequest", "Sampling", "StreamOptions"]

_STOPS = 4
_STOP_CHARS = 256


class StreamOptions(BaseModel):
    """`stream_options`: OpenAI's, with a stream only."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class Sampling(BaseModel):
    """The request fields rbee passes to llama-cpp (a field it does not implement is refused
    before this model reads the body: `rbee.wire.chat.unsupported_field`)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # the queen routes by model; this worker serves its own regardless
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, description="llama.cpp's; 0 turns it off")
    min_p: float | None = Field(default=None, ge=0, le=1, description="llama.cpp's")
    repeat_penalty: float | None = Field(default=None, gt=0, description="llama.cpp's")
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, description="choices; at most the worker's slots")
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _options_need_a_stream(self) -> Sampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only with stream: true")
        return self

    @field_validator("stop")
    @classmethod
    def _bounded(cls, stop: str | list[str] | None) -> str | list[str] | None:
        """OpenAI's own bound, up to 4 stop strings, and a length: each is matched against the
        text of every new token, so a request cannot slow the batch it decodes in."""
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > _STOPS:
            raise ValueError(f"at most {_STOPS} stop strings (got {len(stops)})")
        if any(len(one) > _STOP_CHARS for one in stops):
            raise ValueError(f"a stop string has at most {_STOP_CHARS} characters")
        return stop

    def params(self) -> dict[str, Any]:
        """The sampling settings and prompt the engine takes."""
        params = self.model_dump(
            exclude_none=True,
            exclude={"model", "stream", "max_completion_tokens", "stream_options", "n"},
        )
        if self.max_tokens is None and self.max_completion_tokens is not None:
            params["max_tokens"] = self.max_completion_tokens
        return params


class ChatRequest(Sampling):
    messages: list[dict[str, Any]] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("messages")
    @classmethod
    def _text_only(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [_text_message(i, message) for i, message in enumerate(messages)]

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: only with logprobs: true")
        return self

    def params(self) -> dict[str, Any]:
        params = super().params()
        params["logprobs"] = (self.top_logprobs or 0) if self.logprobs else None
        params.pop("top_logprobs", None)
        return params


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def _text_message(index: int, message: dict[str, Any]) -> dict[str, Any]:
    """A chat message as the chat template takes it: `content` a string. A list of `text`
    parts is joined; an assistant turn may have no content; tool calls and results are
    written as the model is asked to write them (`rbee.worker.tools`). What the worker cannot
    read (images, audio, the legacy `function_call`) is an error naming where it is."""
    where = f"messages.{index}"
    role = message.get("role")
    if role not in _ROLES:
        raise ValueError(f"{where}.role: {role!r} is not supported (one of {sorted(_ROLES)})")
    if message.get("function_call"):
        raise ValueError(f"{where}.function_call: not supported (use tool_calls)")
    content = message.get("content")
    if content is None and role == "assistant":
        content = ""
    elif isinstance(content, list):
        parts = []
        for number, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(
                    f"{where}.content.{number}: only text parts are supported (got {kind!r}; "
                    "this model has no projector for images or audio)"
                )
            parts.append(part["text"])
        content = "\n".join(parts)
    elif not isinstance(content, str):
        raise ValueError(f"{where}.content: a string or a list of text parts")
    if role == "tool" or (role == "assistant" and message.get("tool_calls")):
        return read_turn(where, message, content)
    return {"role": role, "content": content}


class CompletionRequest(Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5, description="OpenAI's bound")

    def params(self) -> dict[str, Any]:
        params = super().params()
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise ValueError("prompt: this worker takes one prompt per request")
            params["prompt"] = self.prompt[0]
        return params
