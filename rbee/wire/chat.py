"""The OpenAI chat bodies rbee's own clients send and read (`rbee infer`): the fields they use.

The queen relays an app's OpenAI bodies as they come; these types are for rbee's side of that
conversation only, so a chunk's unknown fields are ignored and a request names what it sends.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatChunk", "ChatMessage", "ChatRequest"]


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
