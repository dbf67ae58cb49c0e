"""Embeddings and rerank through a real cluster: `rbee apply` of a BERT embedding GGUF and a
BERT reranker (written by the tests, `tests.fixtures.synthetic_bert`), then the OpenAI SDK and
plain HTTP at the queen: its keys, its `tpm` counting input tokens, its metrics; and embedding
jobs (`/v1/jobs` with `input`) on the same cluster."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.cluster import LocalCluster, applied_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    gguf: Path,
    embedding_gguf: Path,
    reranker_gguf: Path,
) -> Iterator[LocalCluster]:
    def declare(cluster: LocalCluster) -> None:
        cluster.config.write_text(
            f"""\
version: 1
queen:
  url: {cluster.queen_url}
self_heal: false
hives:
  - name: local
    host: 127.0.0.1
    port: {cluster.hive_port}
models:
  - name: bge-tiny
    source: file://{embedding_gguf}
    sha256: {_sha256(embedding_gguf)}
  - name: bge-reranker-tiny
    source: file://{reranker_gguf}
    sha256: {_sha256(reranker_gguf)}
worker_binaries:
  - name: cpu
    backend: cpu
deployments:
  - model: bge-tiny
    worker: cpu
    hives: [local]
    slots: 2
    ctx_size: 512
  - model: bge-reranker-tiny
    worker: cpu
    hives: [local]
    slots: 1
    ctx_size: 512
"""
        )

    with applied_cluster(tmp_path_factory.mktemp("home"), gguf, declare=declare) as applied:
        yield applied


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_status_says_which_model_embeds_and_which_reranks(cluster: LocalCluster) -> None:
    text = cluster.rbee("status").stdout
    assert "model bge-tiny  bert 139K F32, ctx 512, embedding model" in text
    assert "model bge-reranker-tiny  bert 143K F32, ctx 512, reranker" in text


def test_the_openai_sdk_reads_embeddings_through_the_queen(cluster: LocalCluster) -> None:
    client = openai.OpenAI(base_url=f"{cluster.queen_url}/v1", api_key=cluster.token, max_retries=0)
    # The SDK asks for base64 unless told otherwise, and decodes it: both encodings, validated.
    packed = client.embeddings.create(model="bge-tiny", input=["the bees", "make honey"])
    floats = client.embeddings.create(
        model="bge-tiny", input=["the bees", "make honey"], encoding_format="float"
    )
    assert [d.index for d in packed.data] == [0, 1]
    assert [d.embedding for d in packed.data] == [d.embedding for d in floats.data]
    assert len(packed.data[0].embedding) == 64
    assert packed.usage.prompt_tokens == packed.usage.total_tokens == 8
    with pytest.raises(openai.BadRequestError) as wrong:
        client.chat.completions.create(
            model="bge-tiny", messages=[{"role": "user", "content": "hi"}]
        )
    assert wrong.value.code == "model_not_supported"
    assert "is an embedding model" in str(wrong.value)


def test_rerank_through_the_queen(cluster: LocalCluster) -> None:
    body = {"model": "bge-reranker-tiny", "query": "bees", "documents": ["honey", "a road"]}
    response = httpx.post(
        f"{cluster.queen_url}/v1/rerank", json=body, headers=cluster.headers, timeout=30
    )
    assert response.status_code == 200, response.text
    assert sorted(r["index"] for r in response.json()["results"]) == [0, 1]
    assert response.headers["x-rbee-worker"] == "local.bge-reranker-tiny.0"


def test_a_keys_tpm_counts_the_input_tokens_of_embeddings(cluster: LocalCluster) -> None:
    key = cluster.rbee("key", "create", "rag", "--scope", "inference", "--tpm", "20").stdout
    client = openai.OpenAI(base_url=f"{cluster.queen_url}/v1", api_key=key.strip(), max_retries=0)
    before = _answered(cluster, "bge-tiny")
    words = "the bees make honey in the hive and water"
    used = client.embeddings.create(model="bge-tiny", input=[words, words])
    assert used.usage.prompt_tokens == 22  # over the minute's 20: the next request waits
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="bge-tiny", input="bees")
    assert _answered(cluster, "bge-tiny") == before + 1  # counted as any answered request


def _answered(cluster: LocalCluster, model: str) -> float:
    text = cluster.get("/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rbee_queen_requests_total"
        and sample.labels.get("model") == model
        and sample.labels.get("status") == "200"
    )


def _job(
    cluster: LocalCluster, body: dict[str, Any], headers: dict[str, str]
) -> tuple[str, list[dict[str, Any]]]:
    """Submit a job and follow its events to its end: its id and its events."""
    created = httpx.post(f"{cluster.queen_url}/v1/jobs", json=body, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    job_id: str = created.json()["job_id"]
    url = f"{cluster.queen_url}/v1/jobs/{job_id}/events"
    with httpx.stream("GET", url, headers=headers, timeout=60) as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data:")]
    return job_id, events


def test_an_embedding_job_keeps_the_vectors_a_direct_request_answers(
    cluster: LocalCluster,
) -> None:
    """Queued, assigned, done (no chunks: one answer, not streamed), and its result is the
    worker's `data` and `usage`, stored: the same vectors `/v1/embeddings` answers."""
    inputs = ["the bees", "make honey"]
    body = {"model": "bge-tiny", "input": inputs, "encoding_format": "float"}
    job_id, events = _job(cluster, {**body, "priority": "interactive"}, cluster.headers)
    assert [e["event"] for e in events] == ["queued", "assigned", "done"]
    record = cluster.get(f"/v1/jobs/{job_id}").json()
    assert (record["kind"], record["state"], record["runs"]) == ("embedding", "done", 1)
    direct = httpx.post(
        f"{cluster.queen_url}/v1/embeddings", json=body, headers=cluster.headers, timeout=30
    ).json()
    assert record["result"]["usage"] == direct["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    assert record["result"]["data"] == direct["data"]
    assert [len(d["embedding"]) for d in record["result"]["data"]] == [64, 64]
    assert events[-1]["result"] == record["result"]
    listed = {j["job_id"]: j for j in cluster.get("/v1/jobs").json()["jobs"]}
    assert listed[job_id]["state"] == "done"
    assert listed[job_id]["result"] is None  # a list leaves the vectors out
    shown = cluster.rbee("job", "get", job_id)
    assert [json.loads(line) for line in shown.stdout.splitlines()[-2:]] == [
        d["embedding"] for d in direct["data"]
    ]
    assert "2 vectors, 8 input tokens" in shown.stderr


def test_an_embedding_job_counts_its_input_tokens_against_the_keys_tpm(
    cluster: LocalCluster,
) -> None:
    key = cluster.rbee("key", "create", "rag-jobs", "--scope", "inference", "--tpm", "20")
    headers = {"authorization": f"Bearer {key.stdout.strip()}"}
    words = "the bees make honey in the hive and water"
    job_id, _ = _job(cluster, {"model": "bge-tiny", "input": [words, words]}, headers)
    done = httpx.get(f"{cluster.queen_url}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
    assert done["result"]["usage"]["prompt_tokens"] == 22  # over the minute's 20
    late = httpx.post(
        f"{cluster.queen_url}/v1/jobs",
        json={"model": "bge-tiny", "input": "bees"},
        headers=headers,
        timeout=10,
    )
    assert late.status_code == 429, late.text
    assert late.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_job_its_model_is_not_for_fails_with_the_workers_message(cluster: LocalCluster) -> None:
    """Chat of an embedding model, embeddings of a reranker: the queen cannot know a model's
    purpose before its worker answers, so the job fails with the worker's 400."""
    chat = {"model": "bge-tiny", "messages": [{"role": "user", "content": "hi"}]}
    embed = {"model": "bge-reranker-tiny", "input": "bees"}
    for body, says in ((chat, "is an embedding model"), (embed, "is a reranker")):
        job_id, events = _job(cluster, body, cluster.headers)
        assert events[-1]["event"] == "error"
        record = cluster.get(f"/v1/jobs/{job_id}").json()
        assert record["state"] == "failed", record
        assert record["error"].startswith("the worker refused the job (400): the model ")
        assert says in record["error"]
