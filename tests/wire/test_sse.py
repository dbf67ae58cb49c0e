"""SSE framing (rbee.wire.sse) as the clients read it back (httpx-sse)."""

from __future__ import annotations

import httpx

from rbee.clients import _sse_events
from rbee.wire import sse


def _response(body: bytes) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": sse.MEDIA_TYPE}, content=body)


def test_json_events_read_back_in_order_and_done_ends_nothing() -> None:
    chunks = [{"choices": [{"delta": {"content": "Hel"}}]}, {"text": "line one\nline two"}]
    body = b"".join(sse.json_event(chunk) for chunk in chunks) + sse.DONE
    assert list(_sse_events(_response(body))) == chunks


def test_a_payload_of_several_lines_is_one_event() -> None:
    framed = sse.event('{"a":\n1}')
    assert framed == b'data: {"a":\ndata: 1}\n\n'
    # A line-by-line reader (rbee's before httpx-sse) fails here: each line alone is not JSON.
    assert list(_sse_events(_response(framed))) == [{"a": 1}]


def test_comments_and_event_names_do_not_confuse_the_reader() -> None:
    body = b": keep-alive\n\nevent: progress\n" + sse.json_event({"done": 1})
    assert list(_sse_events(_response(body))) == [{"done": 1}]
