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


def test_a_job_with_a_field_rbee_does_not_implement_is_refused_at_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process_queen(tmp_path, monkeypatch, TOKEN) as queen:
        queen.add_worker("local.scripted.0", "https://127.0.0.1:9")
        body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        refused = queen.client.post(
            "/v1/jobs", json={**body, "tools": tools}, headers=queen.headers
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["message"].startswith("tools: a job's result holds")
        for field, value in (("logit_bias", {"1": 2}), ("n", 2), ("logprobs", True)):
            refused = queen.client.post(
                "/v1/jobs", json={**body, field: value}, headers=queen.headers
            )
            assert refused.status_code == 400, field
            assert refused.json()["error"]["message"].startswith(f"{field}: ")
        harmless = {**body, "user": "u-1", "n": 1, "priority": "interactive"}
        accepted = queen.client.post("/v1/jobs", json=harmless, headers=queen.headers)
        assert accepted.status_code == 201, accepted.text
