"""The hives' routes: the registered hives and their health, refreshing a hive's
capabilities, testing SSH to a would-be hive, and hives read from the queen's SSH config."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from rbee.clients import HiveClient, HiveTimeout
from rbee.config.models import Hive
from rbee.errors import RbeeError
from rbee.observe.ssh import probe
from rbee.queen.http.errors import Refused, parse_body
from rbee.queen.http.state import QueenState, queen_of
from rbee.remote.ssh_config import hives_from_ssh_config
from rbee.wire import SshImport, SshTestRequest

__all__ = ["get_hive", "import_ssh", "list_hives", "refresh_capabilities", "ssh_test"]


async def list_hives(request: Request) -> JSONResponse:
    records = queen_of(request).hive_registry.records()
    return JSONResponse([r.model_dump(mode="json") for r in records])


async def get_hive(request: Request) -> JSONResponse:
    queen = queen_of(request)
    name = request.path_params["name"]
    hive = _registered(queen, name)
    record = (
        await queen.hive_registry.check(hive)
        if request.query_params.get("refresh")
        else queen.hive_registry.get(name)
    )
    assert record is not None
    return JSONResponse(record.model_dump(mode="json"))


def _registered(queen: QueenState, name: str) -> Hive:
    hive = next((h for h in queen.hive_registry.hives() if h.name == name), None)
    if hive is None:
        raise Refused(404, f"no hive named {name!r} is registered", "not_found_error")
    return hive


async def refresh_capabilities(request: Request) -> JSONResponse:
    queen = queen_of(request)
    hive = _registered(queen, request.path_params["name"])
    async with HiveClient(hive.url, hive.name, timeout=HiveTimeout.ACTION) as client:
        try:
            capabilities = await client.capabilities()
        except RbeeError as exc:
            raise Refused(502, exc.message, "bad_gateway", "hive_unreachable") from None
    queen.hive_registry.set_capabilities(hive.name, capabilities)
    record = queen.hive_registry.get(hive.name)
    assert record is not None
    return JSONResponse(record.model_dump(mode="json"))


async def ssh_test(request: Request) -> JSONResponse:
    body = await parse_body(request, SshTestRequest)
    try:
        hive = Hive.model_validate(body.hive)
    except ValidationError as exc:
        message = f"invalid hive: {exc.errors()[0]['msg']}"
        raise Refused(422, message, "invalid_request_error") from None
    if hive.effective_mode != "network":
        raise Refused(422, f"hive {hive.name} is local: no SSH", "invalid_request_error")
    return JSONResponse((await probe(hive)).model_dump(mode="json"))


async def import_ssh(request: Request) -> JSONResponse:
    # Only the queen's own ~/.ssh/config: the queen is who connects, with its keys.
    path = Path.home() / ".ssh" / "config"
    try:
        text = path.read_text()
    except OSError as exc:
        raise Refused(404, f"cannot read {path}: {exc.strerror}", "not_found_error") from None
    found = SshImport(path=str(path), hives=hives_from_ssh_config(text))
    return JSONResponse(found.model_dump(mode="json"))
