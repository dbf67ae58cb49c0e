"""How the queen's routes refuse a request and read its body, in one place.

A handler raises `Refused` (status, OpenAI-style error body, optional `Retry-After`); the
Starlette apps turn it into its response through `EXCEPTION_HANDLERS`. Bodies are JSON
objects: malformed JSON is a 400, a body of the wrong shape a 422 naming the field.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.wire import json_object, openai_error

__all__ = ["EXCEPTION_HANDLERS", "Refused", "json_body", "limit", "parse_body"]

_Body = TypeVar("_Body", bound=BaseModel)


class Refused(Exception):
    """A request the queen refuses; `EXCEPTION_HANDLERS` turns it into its JSON response."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        headers = {"retry-after": str(retry_after)} if retry_after is not None else None
        self.response = JSONResponse(
            openai_error(message, type_, code), status_code=status, headers=headers
        )


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return exc.response


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, a method the route lacks) in OpenAI's error
    shape, as every other answer of the queen: SDKs parse `error.message`."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
        body = openai_error(message, "not_found_error", "unknown_route")
    else:
        body = openai_error(str(exc.detail), "invalid_request_error")
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


#: The exception handlers of every Starlette app of the queen.
EXCEPTION_HANDLERS = {Refused: _refused, HTTPException: _http_error}


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; malformed JSON is a 400."""
    try:
        return json_object(await request.body())
    except ValueError as exc:
        raise Refused(400, str(exc), "invalid_request_error") from None


async def parse_body(request: Request, model: type[_Body]) -> _Body:
    """The request's JSON body as `model`; malformed JSON is a 400, a wrong shape a 422 that
    names the field."""
    body = await json_body(request)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise Refused(422, f"{where}: {first['msg']}", "invalid_request_error") from None


def limit(request: Request, default: int) -> int:
    """The `limit` query parameter: a count from 1 to 1000 (`default` when absent)."""
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise Refused(422, "limit must be a whole number from 1 to 1000", "invalid_request_error")
    return int(raw)
