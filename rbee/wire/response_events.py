"""The Responses API's answers: a chat answer as the Responses object, and chat chunks as its
named, numbered stream events (`ResponseBuilder`), for a request read by
`rbee.wire.responses`."""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import Any, Literal

from rbee.wire.responses import ResponsesRequest

__all__ = ["ResponseBuilder", "sse_event"]


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _usage(chat: dict[str, Any]) -> dict[str, Any]:
    """Chat's usage as Responses counts it (`input_tokens` before `output_tokens`: the order
    the queen's count reads them in)."""
    prompt, completion = chat["prompt_tokens"], chat["completion_tokens"]
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponseBuilder:
    """The Responses object of one request, built from its chat answer (`answer`) or its chat
    chunks (`start`, `feed` each chunk, `finish`: the named events of a stream, numbered)."""

    def __init__(self, request: ResponsesRequest, model: str, created_at: int) -> None:
        self.request = request
        self.model = model
        self.created_at = created_at
        self.id = _new_id("resp")
        self._sequence = 0
        self._output: list[dict[str, Any]] = []
        self._message: dict[str, Any] | None = None  # the message item a stream is writing
        self._calls: dict[int, dict[str, Any]] = {}  # chat's tool-call index → its item
        self._reason: str | None = None
        self._usage: dict[str, Any] | None = None

    def answer(self, chat: dict[str, Any]) -> dict[str, Any]:
        """The whole Responses object of a whole chat answer."""
        choice = chat["choices"][0]
        message = choice["message"]
        self._reason = choice.get("finish_reason")
        calls = message.get("tool_calls") or []
        if message.get("content") or not calls:
            item = self._message_item(message.get("content") or "")
            self._output.append(item | {"status": self._status()})
        for call in calls:
            function = call["function"]
            item = self._call_item(call.get("id"), function["name"], function["arguments"])
            self._output.append(item | {"status": "completed"})
        self._usage = chat.get("usage")
        return self._response(self._status())

    def start(self) -> list[dict[str, Any]]:
        """The events that open a stream."""
        response = self._response("in_progress")
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of one chat chunk (none for a chunk that adds nothing)."""
        events: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                events += self._call(call)
            if choice.get("finish_reason"):
                self._reason = choice["finish_reason"]
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The events that close a stream: each open item done, then `response.completed`
        (`response.incomplete` when `max_output_tokens` cut the answer)."""
        events: list[dict[str, Any]] = []
        if not self._output:  # an empty answer is still a message
            events += self._text("")
        events += self._close_message()
        for item in self._calls.values():
            item["status"] = "completed"
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=self._index(item),
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            events.append(self._item_event("response.output_item.done", item))
        self._calls = {}
        status = self._status()
        events.append(self._event(f"response.{status}", response=self._response(status)))
        return events

    def fail(self, message: str) -> list[dict[str, Any]]:
        """The event that ends a stream whose generation failed."""
        response = self._response("failed")
        response["error"] = {"code": "server_error", "message": message}
        return [self._event("response.failed", response=response)]

    def _status(self) -> Literal["completed", "incomplete"]:
        return "incomplete" if self._reason == "length" else "completed"

    def _response(self, status: str) -> dict[str, Any]:
        finished = status in ("completed", "incomplete")
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "model": self.model,
            "output": copy.deepcopy(self._output) if finished else [],
            **self.request.echo(),
            # Last: nothing the caller wrote follows it, so the queen's count reads this one.
            "usage": _usage(self._usage) if self._usage and finished else None,
        }

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type_, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _item_event(self, type_: str, item: dict[str, Any]) -> dict[str, Any]:
        return self._event(type_, output_index=self._index(item), item=copy.deepcopy(item))

    def _message_item(self, text: str) -> dict[str, Any]:
        return {
            "type": "message",
            "id": _new_id("msg"),
            "status": "in_progress",
            "role": "assistant",
            "content": [_part(text)],
        }

    def _call_item(self, call_id: str | None, name: str, arguments: str) -> dict[str, Any]:
        return {
            "type": "function_call",
            "id": _new_id("fc"),
            "call_id": call_id or _new_id("call"),
            "name": name,
            "arguments": arguments,
            "status": "in_progress",
        }

    def _text(self, delta: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        message = self._message
        if message is None:
            message = self._message = self._message_item("")
            message["content"] = []
            self._output.append(message)
            events.append(self._item_event("response.output_item.added", message))
            message["content"] = [_part("")]
            events.append(self._part_event("response.content_part.added", message))
        if delta:
            message["content"][0]["text"] += delta
            events.append(
                self._event(
                    "response.output_text.delta",
                    **self._where(message),
                    delta=delta,
                    logprobs=[],
                )
            )
        return events

    def _close_message(self) -> list[dict[str, Any]]:
        message = self._message
        if message is None:
            return []
        self._message = None
        message["status"] = self._status()
        text = message["content"][0]["text"]
        return [
            self._event(
                "response.output_text.done", **self._where(message), text=text, logprobs=[]
            ),
            self._part_event("response.content_part.done", message),
            self._item_event("response.output_item.done", message),
        ]

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            events += self._close_message()  # a call after text: the text is done
            item = self._calls[index] = self._call_item(
                call.get("id"), function.get("name", ""), ""
            )
            self._output.append(item)
            events.append(self._item_event("response.output_item.added", item))
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self._index(item),
                    delta=function["arguments"],
                )
            )
        return events

    def _index(self, item: dict[str, Any]) -> int:
        """`item`'s place in the output (by identity: a stream's items change as they grow)."""
        return next(index for index, one in enumerate(self._output) if one is item)

    def _where(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "item_id": message["id"],
            "output_index": self._index(message),
            "content_index": 0,
        }

    def _part_event(self, type_: str, message: dict[str, Any]) -> dict[str, Any]:
        part = dict(message["content"][0])
        return self._event(type_, **self._where(message), part=part)


def sse_event(event: dict[str, Any]) -> bytes:
    """One server-sent event of a Responses stream: named by its `type`, as OpenAI's are."""
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()
