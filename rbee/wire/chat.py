"""OpenAI chat and completion requests on rbee's side: which fields rbee implements, accepts as
harmless or refuses (`unsupported_field`, used by the worker on every request and by the queen
on every job), and the bodies rbee's own client sends and reads (`rbee infer`).

The queen relays an app's OpenAI bodies as they come; the worker is where they are read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AT_DEFAULT",
    "HARMLESS",
    "IMPLEMENTED",
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "unsupported_field",
]

#: The request fields the worker implements, chat and completions together (a test pins them
#: to the worker's request models).
IMPLEMENTED = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "stop",
        "n",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)

# OpenAI request fields the worker accepts without acting on them, because OpenAI defines
# them as having no effect on the answer (an end user's id, stored-completion metadata).
# README lists them.
HARMLESS = frozenset({"user", "metadata", "store", "service_tier"})
# Fields accepted at the value that asks for nothing rbee lacks; any other value is a 400.
AT_DEFAULT: dict[str, tuple[object, ...]] = {
    "echo": (False,),
    "best_of": (1,),
    "logit_bias": ({},),
}


def unsupported_field(body: dict[str, Any], fields: Iterable[str]) -> str | None:
    """The first field of `body` rbee would otherwise have to ignore, as a 400's message; None
    when every field is in `implemented`, harmless or at its default. The worker checks each
    request, the queen each job at submission."""
    for name, value in body.items():
        if name in fields or name in HARMLESS or value is None:
            continue
        if any(type(value) is type(d) and value == d for d in AT_DEFAULT.get(name, ())):
            continue
        return f"{name}: not supported by rbee (a field it would otherwise ignore)"
    return None


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)


class ChatMessage(_Wire):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions` as `rbee infer` sends it (streamed)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    stream: Literal[True] = True


class _Delta(_Wire):
    content: str | None = None


class _Choice(_Wire):
    index: int = 0
    delta: _Delta = _Delta()


class ChatChunk(_Wire):
    """One chunk of a streamed chat completion: the text it adds."""

    choices: list[_Choice] = []

    @property
    def text(self) -> str:
        """The first choice's new text ("" for a chunk that carries none, the role's first)."""
        return (self.choices[0].delta.content or "") if self.choices else ""
