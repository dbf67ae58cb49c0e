"""`/v1/embeddings` and `/v1/rerank` refusals, the worker's app in this process: a request to a
model of the other kind, and bodies the worker cannot read, are 400s in OpenAI's error shape
before the model is loaded (what a GGUF is for is read from its header)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from rbee.catalog.gguf import read_facts
from rbee.wire import WorkerArgs
from rbee.worker.app import create_app
from rbee.worker.embed import MAX_INPUTS


def _post(gguf: Path, path: str, body: dict[str, Any]) -> httpx.Response:
    config = WorkerArgs(
        worker_id="w1",
        hive="local",
        model="bge-tiny",
        model_path=str(gguf),
        port=9001,
        queen_url="http://127.0.0.1:1",
    )

    async def post() -> httpx.Response:
        # No lifespan: the model never loads; what the app answers needs only the header.
        transport = httpx.ASGITransport(app=create_app(config))
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            return await client.post(path, json=body)

    return asyncio.run(post())


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def test_the_header_says_what_each_model_is_for(
    gguf: Path, embedding_gguf: Path, reranker_gguf: Path
) -> None:
    assert read_facts(gguf).purpose == "chat"
    assert read_facts(embedding_gguf).purpose == "embedding"
    assert read_facts(reranker_gguf).purpose == "rerank"
    assert read_facts(embedding_gguf).describe() == "bert 139K F32, ctx 512, embedding model"
    assert read_facts(reranker_gguf).kv_bytes_per_token == 0  # an encoder keeps no KV cache


def test_embeddings_of_a_chat_model_is_a_400_saying_it_is_a_chat_model(gguf: Path) -> None:
    error = _error(_post(gguf, "/v1/embeddings", {"input": "bees"}))
    assert error["code"] == "model_not_supported"
    assert error["message"] == (
        "the model 'bge-tiny' is a chat model: it serves POST /v1/chat/completions, "
        "/v1/completions or /v1/responses, not POST /v1/embeddings"
    )
    assert "is a chat model" in _error(_post(gguf, "/v1/rerank", _RERANK))["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/rerank", {"query": "bees", "documents": ["honey"]}),
    ],
)
def test_a_request_an_embedding_model_does_not_serve_is_a_400_naming_what_it_is_for(
    embedding_gguf: Path, path: str, body: dict[str, Any]
) -> None:
    error = _error(_post(embedding_gguf, path, body))
    assert error["code"] == "model_not_supported"
    assert error["message"].startswith(
        "the model 'bge-tiny' is an embedding model: it serves POST /v1/embeddings, not "
    )


def test_embeddings_of_a_reranker_is_a_400_pointing_at_rerank(reranker_gguf: Path) -> None:
    error = _error(_post(reranker_gguf, "/v1/embeddings", {"input": "bees"}))
    assert error["message"].startswith(
        "the model 'bge-tiny' is a reranker: it serves POST /v1/rerank"
    )


_RERANK = {"query": "bees", "documents": ["honey"]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": "bees", "dimensions": 32}, "dimensions: not supported: a GGUF does not say"),
        ({"input": ""}, "input: an empty string"),
        ({"input": []}, "input: an empty list"),
        ({"input": ["bees", ""]}, "input.1: an empty string"),
        ({"input": [[5, 6], []]}, "input.1: a token-id list must hold token ids"),
        ({"input": ["bees", 3]}, "input.1: a string, a list of strings"),
        ({"input": ["bees", [5]]}, "input: a string, a list of strings, a list of token ids or a"),
        ({"input": 3}, "input: a string, a list of strings, a list of token ids or a list"),
        ({"input": ["x"] * (MAX_INPUTS + 1)}, f"input: at most {MAX_INPUTS} inputs per request"),
        ({"input": "bees", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "bees", "truncate": True}, "truncate: not supported by rbee"),
        ({}, "input"),
    ],
)
def test_an_embeddings_body_the_worker_cannot_read_is_a_400_naming_the_field(
    embedding_gguf: Path, body: dict[str, Any], message: str
) -> None:
    assert _error(_post(embedding_gguf, "/v1/embeddings", body))["message"].startswith(message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"query": "", "documents": ["honey"]}, "query"),
        ({"query": "bees", "documents": []}, "documents"),
        ({"query": "bees", "documents": ["honey", 3]}, "documents.1"),
        ({**_RERANK, "top_n": 0}, "top_n"),
        ({**_RERANK, "rank_fields": ["text"]}, "rank_fields: not supported by rbee"),
    ],
)
def test_a_rerank_body_the_worker_cannot_read_is_a_400_naming_the_field(
    reranker_gguf: Path, body: dict[str, Any], message: str
) -> None:
    assert _error(_post(reranker_gguf, "/v1/rerank", body))["message"].startswith(message)


def test_a_readable_request_waits_for_the_model_like_any_other(embedding_gguf: Path) -> None:
    refused = _post(embedding_gguf, "/v1/embeddings", {"input": "bees", "user": "u-1"})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "loading"
