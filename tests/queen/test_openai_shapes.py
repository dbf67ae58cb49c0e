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


def test_an_embedding_job_with_dimensions_or_another_kinds_field_is_refused_at_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process_queen(tmp_path, monkeypatch, TOKEN) as queen:
        queen.add_worker("local.scripted.0", "https://127.0.0.1:9")
        body = {"model": "scripted", "input": ["the bees", "make honey"]}

        def submit(job: dict[str, object]) -> tuple[int, str]:
            answer = queen.client.post("/v1/jobs", json=job, headers=queen.headers)
            return answer.status_code, answer.json().get("error", {}).get("message", "")

        status, message = submit({**body, "dimensions": 32})
        assert status == 400 and message.startswith("dimensions: not supported: a GGUF")
        status, message = submit({**body, "max_tokens": 8})  # a chat field
        assert (status, message.split(":")[0]) == (400, "max_tokens")
        chat = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
        status, message = submit({**chat, "encoding_format": "base64"})  # an embeddings field
        assert (status, message.split(":")[0]) == (400, "encoding_format")
        status, message = submit({**chat, "input": "bees"})
        assert status == 422 and "send one" in message
        status, message = submit({**body, "input": ["bees"] * 2049})
        assert status == 422 and "at most 2048 inputs per job (got 2049)" in message
        status, message = submit({**body, "input": ["bees", ""]})
        assert status == 422 and "nothing to embed" in message
        tokens = [[101, 7, 102], [101, 102]]
        harmless = {**body, "input": tokens, "user": "u-1", "encoding_format": "base64"}
        assert submit(harmless)[0] == 201


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/responses"],
)
def test_every_inference_route_needs_an_inference_key_and_refuses_a_cross_site_post(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    body = {"model": "scripted", "input": "hi"}
    with in_process_queen(tmp_path, monkeypatch, TOKEN) as queen:
        plan = {"authorization": f"Bearer {queen.key('ci', 'plan')}"}
        inference = {"authorization": f"Bearer {queen.key('app', 'inference')}"}
        assert queen.client.post(path, json=body).status_code == 401
        refused = queen.client.post(path, json=body, headers=plan)
        assert (
            refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
        )
        page = {**queen.headers, "content-type": "text/plain", "origin": "http://evil.example"}
        cross = queen.client.post(path, content=b'{"model": "scripted"}', headers=page)
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "cross_origin"
        # An inference key gets through to the relay: no worker serves this model (a 404).
        assert queen.client.post(path, json=body, headers=inference).status_code == 404
