"""The queen's answers in the shapes the OpenAI SDK validates, its app in this process."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai.types import Model

from tests.fixtures.in_process_queen import in_process_queen

TOKEN = "shapes-token"


def test_models_are_the_sdks_model_type_and_an_unknown_route_is_an_openai_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process_queen(tmp_path, monkeypatch, TOKEN) as queen:
        queen.add_worker("local.scripted.0", "https://127.0.0.1:9")
        listing = queen.client.get("/v1/models", headers=queen.headers)
        assert listing.status_code == 200
        [entry] = listing.json()["data"]
        assert Model.model_validate(entry, strict=True).id == "scripted"  # `created` included

        missing = queen.client.get("/v1/no-such-route", headers=queen.headers)
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["type"] == "not_found_error" and "/v1/no-such-route" in error["message"]
