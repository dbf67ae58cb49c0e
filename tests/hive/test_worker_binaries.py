"""The hive's worker-binary catalog over HTTP: provision by operation, list, spawn with, delete."""

from __future__ import annotations

import hashlib
import sys
from importlib.metadata import version
from pathlib import Path

import httpx
import psutil
import pytest

from rbee.hive.binaries import WorkerBinaryCatalog
from rbee.wire import AddWorkerBinary
from tests.fixtures.hub import fake_hub
from tests.fixtures.pki import client_tls
from tests.fixtures.ports import free_port
from tests.hive.conftest import (
    WORKER_START_S,
    Hive,
    HiveFactory,
    add_model,
    add_worker_binary,
    spawn,
    spawn_body,
    wait_until,
    workers_of,
)

# Another name for this venv's interpreter than the one the hive runs with (sys.executable).
VENV_PYTHON = str(Path(sys.prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")


def catalog_dir(hive: Hive) -> Path:
    return hive.home / ".cache" / "rbee" / "workers"


def test_the_default_cpu_binary_is_the_hives_own_python(hive: Hive) -> None:
    with hive.client() as client:
        events = add_worker_binary(client, "cpu", spec={"name": "cpu"})
        listed = client.get("/v1/worker-binaries").json()
        one = client.get("/v1/worker-binaries/cpu").json()
    assert events[0]["state"] == "running"
    assert events[-1]["state"] == "succeeded", events
    assert listed == [
        {
            "name": "cpu",
            "backend": "cpu",
            "python": sys.executable,
            "llama_cpp_version": version("llama_cpp_python"),
            "spec": {"name": "cpu"},
        }
    ]
    assert one == listed[0]
    assert [p.name for p in (catalog_dir(hive) / "cpu").iterdir()] == ["metadata.json"]


def test_a_path_to_a_python_with_llama_cpp_is_used_as_is(hive: Hive) -> None:
    spec = {"name": "venv", "backend": "cuda", "path": VENV_PYTHON}
    with hive.client() as client:
        events = add_worker_binary(client, "venv", backend="cuda", path=VENV_PYTHON, spec=spec)
        entry = client.get("/v1/worker-binaries/venv").json()
    assert events[-1]["state"] == "succeeded", events
    assert entry["python"] == VENV_PYTHON
    assert entry["backend"] == "cuda"
    assert entry["spec"] == spec


def test_provisioning_again_replaces_the_entry(hive: Hive) -> None:
    with hive.client() as client:
        add_worker_binary(client, "cpu", spec={"generation": 1})
        events = add_worker_binary(client, "cpu", path=VENV_PYTHON, spec={"generation": 2})
        listed = client.get("/v1/worker-binaries").json()
    assert events[-1]["state"] == "succeeded", events
    assert [(e["python"], e["spec"]) for e in listed] == [(VENV_PYTHON, {"generation": 2})]
    assert [p.name for p in (catalog_dir(hive) / "cpu").iterdir()] == ["metadata.json"]


def test_a_python_without_llama_cpp_fails_and_leaves_nothing_listed(hive: Hive) -> None:
    bare = Path(sys.base_prefix) / "bin" / "python3"
    if Path(sys.prefix) == Path(sys.base_prefix) or not bare.is_file():
        pytest.fail("this test needs to run in a venv whose base Python lacks llama_cpp")
    with hive.client() as client:
        events = add_worker_binary(client, "bare", path=str(bare))
        assert client.get("/v1/worker-binaries").json() == []
        missing = client.get("/v1/worker-binaries/bare")
    assert events[-1]["state"] == "failed"
    error = events[-1]["error"]
    assert f"python {bare} cannot run a worker" in error
    assert "No module named 'llama_cpp'" in error
    assert "install llama-cpp-python and rbee into it" in error
    assert missing.status_code == 404
    assert (
        missing.json()["error"]["message"] == "worker binary 'bare' is not provisioned on this hive"
    )
    assert not (catalog_dir(hive) / "bare").exists()


def test_a_path_that_does_not_exist_fails_with_a_clear_error(hive: Hive, tmp_path: Path) -> None:
    with hive.client() as client:
        events = add_worker_binary(client, "ghost", path=str(tmp_path / "no-python"))
    assert events[-1]["state"] == "failed"
    assert (
        events[-1]["error"]
        == f"python {tmp_path / 'no-python'} does not exist or is not executable"
    )


def test_cuda_without_build_or_path_is_refused(hive: Hive) -> None:
    with hive.client() as client:
        events = add_worker_binary(client, "cuda", backend="cuda")
        assert client.get("/v1/worker-binaries").json() == []
    assert events[-1]["state"] == "failed"
    assert events[-1]["error"] == (
        "a cuda worker binary needs `build:` (compile llama-cpp-python for it) or `path:` "
        "(a Python that has it)"
    )


def test_a_failed_build_names_the_binary_and_ends_with_its_log(hive: Hive) -> None:
    with hive.client() as client:
        events = add_worker_binary(client, "broken", build=True, llama_cpp_python="==0.0.1")
        assert client.get("/v1/worker-binaries").json() == []
    assert events[-1]["state"] == "failed"
    error = events[-1]["error"]
    assert error.startswith("building worker binary 'broken': ")
    assert error.endswith("No matching distribution found for llama-cpp-python==0.0.1"), error
    # Nothing half-built is left to be mistaken for a runtime.
    assert list((catalog_dir(hive) / ".runtimes").glob("*/bin/python")) == []


def test_build_options_without_build_are_refused(hive: Hive) -> None:
    with hive.client() as client:
        resp = client.post("/v1/worker-binaries", json={"name": "x", "cmake_args": "-DX=1"})
    assert resp.status_code == 422
    assert "cmake_args and llama_cpp_python need build: true" in resp.json()["error"]["message"]


@pytest.mark.parametrize("name", ["../x", "..", "a/b", ".hidden"])
def test_a_name_escaping_the_catalog_is_refused(hive: Hive, name: str) -> None:
    with hive.client() as client:
        resp = client.post("/v1/worker-binaries", json={"name": name})
    assert resp.status_code == 422
    assert "invalid name" in resp.json()["error"]["message"]
    assert not (hive.home / ".cache" / "rbee" / "x").exists()


def test_deleting_an_unknown_binary_is_404(hive: Hive) -> None:
    with hive.client() as client:
        resp = client.delete("/v1/worker-binaries/nope")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_spawning_with_an_unprovisioned_binary_is_404(hive: Hive, tmp_path: Path) -> None:
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"GGUFtiny")
    with hive.client() as client:
        assert add_model(client, "tiny", source, hashlib.sha256(b"GGUFtiny").hexdigest())
        resp = client.post(
            "/v1/worker-processes", json=spawn_body(hive, model="tiny", worker_binary="cuda")
        )
        assert workers_of(client, hive) == []
    assert resp.status_code == 404
    assert resp.json()["error"] == {
        "message": "worker binary 'cuda' is not provisioned on this hive",
        "type": "invalid_request_error",
        "param": None,
        "code": "worker_binary_not_found",
    }


@pytest.mark.slow
def test_a_worker_runs_with_its_binarys_python(hive_with_model: Hive) -> None:
    hive = hive_with_model
    with hive.client() as client:
        assert add_worker_binary(client, "venv", path=VENV_PYTHON)[-1]["state"] == "succeeded"
        worker = spawn(client, hive, worker_binary="venv")
        assert workers_of(client, hive) == [worker]
    cmdline = psutil.Process(worker["pid"]).cmdline()
    assert cmdline[:3] == [VENV_PYTHON, "-m", "rbee.worker.server"]
    assert worker["worker_binary"] == "venv"


@pytest.mark.slow
def test_a_binary_in_use_is_kept_until_its_worker_stops(hive_with_model: Hive) -> None:
    hive = hive_with_model
    with hive.client() as client:
        worker = spawn(client, hive)
        refused = client.delete("/v1/worker-binaries/cpu")
        still = client.get("/v1/worker-binaries/cpu")
        assert client.delete(f"/v1/worker-processes/{worker['pid']}").status_code == 200
        deleted = client.delete("/v1/worker-binaries/cpu")
        after = client.get("/v1/worker-binaries").json()
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "in_use"
    assert str(worker["pid"]) in refused.json()["error"]["message"]
    assert still.status_code == 200
    assert deleted.status_code == 200
    assert deleted.json()["name"] == "cpu"
    assert after == []
    assert list(catalog_dir(hive).iterdir()) == []


@pytest.mark.slow
def test_a_cpu_build_streams_its_log_is_reused_and_serves(hive: Hive, gguf: Path) -> None:
    with hive.client() as client:
        first = add_worker_binary(client, "built", backend="cpu", build=True)
        entry = client.get("/v1/worker-binaries/built").json()
        again = add_worker_binary(client, "built", backend="cpu", build=True)
        assert add_model(client, "gemma3-270m", gguf)[-1]["state"] == "succeeded"
        worker = spawn(client, hive, worker_binary="built")
    assert first[-1]["state"] == "succeeded", first[-3:]
    log = [event["message"] for event in first if event.get("message")]
    assert any("pip" in line and "llama-cpp-python==" in line for line in log), log[:3]
    runtime = catalog_dir(hive) / ".runtimes"
    assert Path(entry["python"]).parent.parent.parent == runtime
    # The venv holds its own llama_cpp; rbee comes from the hive's environment.
    assert list(runtime.glob("*/lib/python*/site-packages/llama_cpp/__init__.py"))
    assert next(e["message"] for e in again if e.get("message")).endswith("reusing it")
    assert psutil.Process(worker["pid"]).cmdline()[0] == entry["python"]
    assert _completion_tokens(worker["url"]) > 0


def _completion_tokens(url: str) -> int:
    """Wait for the worker at `url` to load, then complete a prompt; tokens it generated."""
    wait_until(lambda: _state(url) == "idle", WORKER_START_S, "the worker to load")
    answer = httpx.post(
        f"{url}/v1/completions",
        json={"prompt": "The bee", "max_tokens": 4, "temperature": 0},
        timeout=120,
        verify=client_tls("queen", "queen"),
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["usage"]["completion_tokens"])


def _state(url: str) -> str | None:
    try:
        health = httpx.get(f"{url}/health", timeout=1, verify=client_tls("queen", "queen"))
        return str(health.json()["state"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_a_build_takes_the_wheel_of_a_peer_of_the_same_platform(
    start_hive: HiveFactory, tmp_path: Path
) -> None:
    seed = start_hive(env={"HOME": str(tmp_path / "seed")}, port=free_port())
    other = start_hive(env={"HOME": str(tmp_path / "other")}, port=free_port())
    with seed.client() as client:
        assert add_worker_binary(client, "built", build=True)[-1]["state"] == "succeeded"
    down = f"https://127.0.0.1:{free_port()}"  # a peer that is gone is passed over
    with other.client() as client:
        events = add_worker_binary(client, "built", build=True, peers=[down, seed.url])
        entry = client.get("/v1/worker-binaries/built").json()
    assert events[-1]["state"] == "succeeded", events[-3:]
    log = [e["message"] for e in events if e.get("message")]
    assert any("instead of compiling" in line for line in log), log
    assert not any(" pip wheel " in line for line in log), "it compiled anyway"
    assert entry["llama_cpp_version"] == version("llama_cpp_python")


def test_a_peer_serves_only_runtimes_it_built(hive: Hive) -> None:
    with hive.client("hive", "peer") as client:  # as another hive asks it
        assert client.get("/v1/runtimes/0123456789abcdef/wheel").status_code == 404
        assert client.get("/v1/runtimes/..%2F..%2Fetc/wheel").status_code == 404


@pytest.mark.slow
def test_a_wheel_from_a_url_is_checked_installed_and_serves(
    hive: Hive, gguf: Path, tmp_path: Path
) -> None:
    # A real llama-cpp-python wheel: the plain cpu build's, from pip's cache (seconds).
    runtimes = WorkerBinaryCatalog(tmp_path / "made")
    runtimes.provision(AddWorkerBinary(name="made", build=True))
    [wheel] = (tmp_path / "made" / ".runtimes").glob("*/wheel/*.whl")
    for hub in fake_hub():
        served = hub.add("org/wheels", wheel.name, wheel)
        url = f"{hub.cdn_url}/cdn/{served.sha256}/{wheel.name}"
        with hive.client() as client:
            bad = add_worker_binary(client, "bad", url=url, sha256="0" * 64)
            events = add_worker_binary(client, "wheel", url=url, sha256=served.sha256)
            assert add_model(client, "gemma3-270m", gguf)[-1]["state"] == "succeeded"
            worker = spawn(client, hive, worker_binary="wheel")
    assert bad[-1]["state"] == "failed" and "sha256 mismatch" in bad[-1]["error"]
    assert events[-1]["state"] == "succeeded", events[-3:]
    assert _completion_tokens(worker["url"]) > 0
