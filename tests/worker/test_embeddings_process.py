"""The real worker process serving a BERT embedding GGUF and a BERT reranker (random weights, a
real WordPiece vocabulary, llama.cpp's own pooling): OpenAI's shapes, batching, encodings."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.fixtures.synthetic_bert import CLS, SEP, vocabulary
from tests.worker.conftest import HEADERS, FakeQueen, Worker, launch_worker

pytestmark = pytest.mark.slow

TEXTS = [f"the bees of hive {i} make honey" + " and water" * i for i in range(16)]


@pytest.fixture(scope="module")
def embedder(
    queen: FakeQueen, embedding_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    yield from _serving(queen, embedding_gguf, tmp_path_factory, "bge-tiny", slots=2)


@pytest.fixture(scope="module")
def reranker(
    queen: FakeQueen, reranker_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    yield from _serving(queen, reranker_gguf, tmp_path_factory, "bge-reranker-tiny", slots=1)


def _serving(
    queen: FakeQueen, gguf: Path, tmp: pytest.TempPathFactory, name: str, slots: int
) -> Iterator[Worker]:
    """One loaded worker of `gguf` (1 thread), shared by the module's tests."""
    worker = launch_worker(
        queen.url, gguf, tmp.mktemp(name), "--threads", "1", slots=slots, name=name
    )
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def _post(worker: Worker, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{worker.url}{path}", json=body, headers=HEADERS, timeout=60)


def _vectors(worker: Worker, inputs: Any, **body: Any) -> np.ndarray:
    response = _post(worker, "/v1/embeddings", {"input": inputs, **body})
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def test_an_answer_is_openais_list_of_unit_vectors_with_its_usage(embedder: Worker) -> None:
    response = _post(embedder, "/v1/embeddings", {"model": "any", "input": TEXTS[:3]})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"object", "data", "model", "usage"}
    assert (answer["object"], answer["model"]) == ("list", "bge-tiny")
    assert [item["object"] for item in answer["data"]] == ["embedding"] * 3
    assert [item["index"] for item in answer["data"]] == [0, 1, 2]
    vectors = np.array([item["embedding"] for item in answer["data"]])
    assert vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # "the bees of hive 0 make honey": [CLS], 7 words (0 spelled by one token), [SEP].
    assert answer["usage"]["prompt_tokens"] >= 3 * 9
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"]


def test_sixteen_inputs_are_one_decode_with_the_vectors_of_sixteen_requests(
    embedder: Worker,
) -> None:
    before = embedder.health()["embeddings"]
    together = _vectors(embedder, TEXTS)
    after = embedder.health()["embeddings"]
    assert after["decodes"] - before["decodes"] == 1
    assert after["inputs"] - before["inputs"] == 16
    alone = np.concatenate([_vectors(embedder, text) for text in TEXTS])
    cosines = (together * alone).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_base64_is_the_same_floats_little_endian(embedder: Worker) -> None:
    floats = _vectors(embedder, TEXTS[:2])
    response = _post(embedder, "/v1/embeddings", {"input": TEXTS[:2], "encoding_format": "base64"})
    assert response.status_code == 200, response.text
    decoded = [
        np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        for item in response.json()["data"]
    ]
    assert np.array_equal(np.stack(decoded), floats)


def test_token_ids_are_read_as_the_text_they_spell(embedder: Worker) -> None:
    ids = {piece: index for index, piece in enumerate(vocabulary())}
    tokens = [CLS, ids["\u2581the"], ids["\u2581bees"], ids["\u2581make"], ids["\u2581honey"], SEP]
    text = _vectors(embedder, "the bees make honey")
    assert np.allclose(_vectors(embedder, tokens), text, atol=1e-6)
    both = _vectors(embedder, [tokens, [*tokens[:3], SEP]])
    assert np.allclose(both[0], text[0], atol=1e-6)


def test_an_input_longer_than_the_context_is_a_400_naming_it(embedder: Worker) -> None:
    inputs = [*TEXTS[:3], "honey " * 600]
    response = _post(embedder, "/v1/embeddings", {"input": inputs})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "input.3: 602 tokens, more than the 512 this model reads per input"
    alone = _post(embedder, "/v1/embeddings", {"input": [5] * 513})
    assert alone.json()["error"]["message"].startswith("input: 513 tokens, more than the 512")
    unknown = _post(embedder, "/v1/embeddings", {"input": [[5], [99999]]})
    assert unknown.json()["error"]["message"].startswith("input.1: token 99999 is not in")


def test_health_and_models_say_what_the_model_is_for(embedder: Worker) -> None:
    assert embedder.health()["purpose"] == "embedding"
    listing = httpx.get(f"{embedder.url}/v1/models", headers=HEADERS, timeout=5).json()
    assert listing["data"][0]["purpose"] == "embedding"


DOCUMENTS = ["the bees make honey", "a car on the road", "water in the river", "honey bees"]


def test_rerank_scores_every_document_best_first_in_the_jina_shape(reranker: Worker) -> None:
    response = _post(reranker, "/v1/rerank", {"query": "bees and honey", "documents": DOCUMENTS})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"model", "object", "results", "usage"}
    assert (answer["model"], answer["object"]) == ("bge-reranker-tiny", "list")
    results = answer["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(set(r) == {"index", "relevance_score"} for r in results)
    # [CLS] query [SEP] document, as llama-server joins a pair for a BERT vocabulary.
    assert answer["usage"]["prompt_tokens"] == sum(2 + 3 + len(d.split()) for d in DOCUMENTS)
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"]


def test_rerank_top_n_and_documents_returned(reranker: Worker) -> None:
    body = {"query": "bees", "documents": DOCUMENTS, "top_n": 2, "return_documents": True}
    full = _post(reranker, "/v1/rerank", {"query": "bees", "documents": DOCUMENTS}).json()
    answer = _post(reranker, "/v1/rerank", body).json()
    assert [r["index"] for r in answer["results"]] == [r["index"] for r in full["results"][:2]]
    for result in answer["results"]:
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}


def test_a_pair_longer_than_the_context_is_a_400_naming_the_document(reranker: Worker) -> None:
    response = _post(reranker, "/v1/rerank", {"query": "bees", "documents": ["a", "b " * 600]})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("documents.1: 603 tokens, more than")
