"""The hive's model catalog over HTTP: add by file://, progress over SSE, list, delete."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.fixtures.model import MODEL_SHA256
from tests.hive.conftest import Hive, add_model


@pytest.mark.slow
def test_adding_the_real_model_streams_progress_and_succeeds(hive: Hive, gguf: Path) -> None:
    size = gguf.stat().st_size
    with hive.client() as client:
        events = add_model(client, "gemma3-270m", gguf)
        listed = client.get("/v1/models").json()
        one = client.get("/v1/models/gemma3-270m").json()
    progress = [e for e in events if e["state"] == "running" and e["bytes_done"] > 0]
    assert progress, events
    assert all(e["bytes_total"] == size for e in progress)
    done = [e["bytes_done"] for e in progress]
    assert done == sorted(done)
    assert events[-1]["state"] == "succeeded"
    assert events[-1]["bytes_done"] == size
    payload = hive.home / ".cache" / "rbee" / "models" / "gemma3-270m" / "payload"
    assert listed == [
        {
            "name": "gemma3-270m",
            "source": gguf.as_uri(),
            "sha256": MODEL_SHA256,
            "size_bytes": size,
            "path": str(payload),
            "revision": None,
            "facts": {
                "architecture": "gemma3",
                "name": "Gemma 3 270m",
                "parameters": 268_098_176,
                "quantization": "Q4_K_M",
                "context_length": 32768,
                "chat_template": False,
                "kv_bytes_per_token": 18_432,
                "purpose": "chat",
                # Q4_K_M mixes Q6_K into some blocks; the embeddings (tied to the output)
                # stay with the input layer, the output layer is its norm.
                "layer_bytes": [_BIG, _BIG, *[_SMALL, _SMALL, _BIG] * 4, _SMALL, _BIG, _BIG, _BIG],
                "input_bytes": 178_257_920,
                "output_bytes": 2560,
            },
            "damaged": None,
        }
    ]
    assert one == listed[0]
    assert payload.stat().st_size == size


_BIG, _SMALL = 3_995_648, 3_596_288


@pytest.mark.slow
def test_adding_the_same_model_twice_is_a_noop(hive: Hive, gguf: Path) -> None:
    with hive.client() as client:
        add_model(client, "gemma3-270m", gguf)
        payload = hive.home / ".cache" / "rbee" / "models" / "gemma3-270m" / "payload"
        before = payload.stat()
        again = client.post(
            "/v1/models",
            json={"name": "gemma3-270m", "source": gguf.as_uri(), "sha256": MODEL_SHA256},
        )
        assert again.status_code == 202
        state = client.get(f"/v1/operations/{again.json()['operation_id']}").json()
    assert state["state"] == "succeeded"
    assert payload.stat().st_ino == before.st_ino
    assert payload.stat().st_mtime_ns == before.st_mtime_ns


def test_wrong_sha256_fails_and_leaves_nothing_under_the_name(hive: Hive, tmp_path: Path) -> None:
    source = tmp_path / "small.bin"
    source.write_bytes(b"GGUF" + b"x" * 3_000_000)
    with hive.client() as client:
        events = add_model(client, "small", source, sha256="0" * 64)
        assert client.get("/v1/models").json() == []
        assert client.get("/v1/models/small").status_code == 404
    assert events[-1]["state"] == "failed"
    assert "sha256 mismatch" in events[-1]["error"]
    models = hive.home / ".cache" / "rbee" / "models"
    assert list(models.iterdir()) == []


def test_missing_source_file_fails_with_a_clear_error(hive: Hive, tmp_path: Path) -> None:
    with hive.client() as client:
        events = add_model(client, "ghost", tmp_path / "nope.gguf", sha256=None)
    assert events[-1]["state"] == "failed"
    assert "does not exist" in events[-1]["error"]


@pytest.mark.parametrize("name", ["../x", "..", "a/b", ".hidden"])
def test_a_name_escaping_the_catalog_is_refused(hive: Hive, tmp_path: Path, name: str) -> None:
    source = tmp_path / "small.bin"
    source.write_bytes(b"GGUFtiny")
    with hive.client() as client:
        resp = client.post("/v1/models", json={"name": name, "source": source.as_uri()})
    assert resp.status_code == 422
    assert "invalid name" in resp.json()["error"]["message"]
    assert not (hive.home / ".cache" / "rbee" / "x").exists()


def test_an_unsupported_scheme_is_refused(hive: Hive) -> None:
    with hive.client() as client:
        resp = client.post("/v1/models", json={"name": "m", "source": "ftp://host/m.gguf"})
    assert resp.status_code == 422
    assert "source scheme 'ftp' is not supported yet" in resp.json()["error"]["message"]


def test_delete_removes_the_model(hive: Hive, tmp_path: Path) -> None:
    source = tmp_path / "small.bin"
    source.write_bytes(b"GGUFtiny")
    with hive.client() as client:
        events = add_model(client, "small", source, sha256=hashlib.sha256(b"GGUFtiny").hexdigest())
        assert events[-1]["state"] == "succeeded"
        deleted = client.delete("/v1/models/small")
        assert deleted.status_code == 200
        assert deleted.json()["name"] == "small"
        assert client.get("/v1/models").json() == []
        assert client.delete("/v1/models/small").status_code == 404


def test_unknown_operation_is_404(hive: Hive) -> None:
    with hive.client() as client:
        assert client.get("/v1/operations/nope").status_code == 404
        assert client.get("/v1/operations/nope/events").status_code == 404
