"""The API keys' routes: list, create (the secret shown once) and revoke."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from rbee.errors import RbeeError
from rbee.queen.http.errors import Refused, parse_body
from rbee.queen.http.state import queen_of
from rbee.wire import CreatedKey, CreateKey

__all__ = ["create_key", "list_keys", "revoke_key"]

log = logging.getLogger(__name__)


async def list_keys(request: Request) -> JSONResponse:
    return JSONResponse([k.model_dump() for k in queen_of(request).keys.list()])


async def create_key(request: Request) -> JSONResponse:
    asked = await parse_body(request, CreateKey)
    try:
        key, secret = queen_of(request).keys.create(asked.name, asked.scope, asked.rpm, asked.tpm)
    except RbeeError as exc:
        raise Refused(409, exc.message, "conflict", "key_exists") from None
    log.info("event=key_created name=%s scope=%s", key.name, key.scope)
    return JSONResponse(CreatedKey(**key.model_dump(), key=secret).model_dump(), status_code=201)


async def revoke_key(request: Request) -> JSONResponse:
    try:
        key = queen_of(request).keys.revoke(request.path_params["name"])
    except RbeeError as exc:
        raise Refused(404, exc.message, "not_found_error", "no_such_key") from None
    log.info("event=key_revoked name=%s", key.name)
    return JSONResponse(key.model_dump())
