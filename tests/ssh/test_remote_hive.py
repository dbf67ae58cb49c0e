"""rbee installed from the wheelhouse onto a namespace host, its hive started and stopped."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from packaging.utils import canonicalize_name

from rbee import __version__
from rbee.observe.ssh import probe
from rbee.remote import REMOTE_VENV
from rbee.remote.connect import connect
from rbee.remote.daemon import start_hive, stop_hive
from rbee.remote.install import install, installed_version, uninstall
from rbee.remote.requirements import pins_for, read_lock
from rbee.remote.wheelhouse import HIVE_LOCK, build_wheelhouse, project_dir
from rbee.wire import WorkerArgs
from tests.fixtures.netns import SshHost
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow


def test_wheelhouse_is_reused_when_nothing_changed(wheelhouse_dir: Path) -> None:
    first = build_wheelhouse(wheelhouse_dir)
    assert [p.name for p in first if p.name.startswith("rbee-")] == [
        f"rbee-{__version__}-py3-none-any.whl"
    ]
    assert any(p.name.startswith("llama_cpp_python-") for p in first)
    assert build_wheelhouse(wheelhouse_dir) == first


def test_install_start_probe_stop_on_a_remote_host(
    install_host: SshHost, wheelhouse_dir: Path
) -> None:
    hive = install_host.hive(name="remote", port=7835)
    token = secrets.token_urlsafe(16)
    wheels = build_wheelhouse(wheelhouse_dir)

    async def scenario() -> None:
        async with await connect(hive) as conn:
            assert await installed_version(conn) is None
            assert await install(conn, wheels, hive=hive.name) == __version__
            _assert_runs_the_locked_versions(install_host)
            # A second install finds everything in place and sends nothing.
            assert await install(conn, wheels, hive=hive.name) == __version__

            pid = await start_hive(conn, hive, "http://10.0.0.1:7833", token)
            try:
                async with httpx.AsyncClient(base_url=hive.url, timeout=5) as http:
                    health = (await http.get("/health")).json()
                    assert health["service"] == "rbee-hive" and health["pid"] == pid
                    auth = {"Authorization": f"Bearer {token}"}
                    assert (await http.get("/v1/models", headers=auth)).status_code == 200
                    assert (await http.get("/v1/models")).status_code == 401
                processes = install_host.run("ps", "-eww", "-o", "args").stdout
                assert "rbee-hive" in processes and token not in processes

                facts = await probe(hive)
                assert facts.rbee_version == __version__
                assert facts.hive_running and facts.hive_pid == pid and facts.hive_port == 7835
                assert await start_hive(conn, hive, "http://10.0.0.1:7833", token) == pid
            finally:
                assert await stop_hive(conn, hive=hive.name) is True
            assert await stop_hive(conn, hive=hive.name) is False
            facts = await probe(hive)
            assert facts.hive_running is False and facts.rbee_version == __version__

            await uninstall(conn, purge_caches=True, hive=hive.name)
            assert await installed_version(conn) is None
            assert not (install_host.home / ".cache" / "rbee").exists()

    asyncio.run(scenario())


def _assert_runs_the_locked_versions(host: SshHost) -> None:
    """The host's venv holds the lock's version of every locked distribution, and nothing
    else but rbee and the venv's own pip."""
    python = str(host.home / REMOTE_VENV / "bin" / "python")
    script = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps(['%d.%d' % sys.version_info[:2], "
        "{d.metadata['Name']: d.version for d in m.distributions()}]))"
    )
    version, found = json.loads(host.run(python, "-c", script).stdout)
    installed = {canonicalize_name(name): v for name, v in found.items()}
    locked = pins_for(read_lock(project_dir() / HIVE_LOCK), version)
    assert {name: installed.get(name) for name in locked} == {
        name: pin.version for name, pin in locked.items()
    }
    assert set(installed) - set(locked) <= {"rbee", "pip", "setuptools"}
    # Read without rbee's parser too: the one pin the 2026-12 suite failed on.
    [cryptography] = re.findall(
        r"^cryptography==(\S+)", (project_dir() / HIVE_LOCK).read_text(), re.M
    )
    assert installed["cryptography"] == cryptography


def _pyenv_python(version: str) -> Path:
    """A CPython of another minor version than the tests' (pyenv has them on these machines);
    the test fails under CI without one and is skipped elsewhere."""
    found = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    if not found:
        message = f"needs a Python {version} (pyenv install {version})"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found[-1]


def test_a_host_with_another_python_gets_a_wheelhouse_it_installs_offline_and_serves_from(
    wheelhouse_dir: Path, tmp_path: Path, gguf: Path
) -> None:
    python = _pyenv_python("3.12")
    wheels = build_wheelhouse(wheelhouse_dir, python="3.12")
    # Every compiled wheel is for CPython 3.12's ABI (or the stable one): none for 3.11.
    abis = {w.name.removesuffix(".whl").split("-")[-2] for w in wheels}
    assert "cp312" in abis and abis <= {"cp312", "abi3", "none"}, abis
    assert any(w.name.startswith("llama_cpp_python-") for w in wheels)
    # What the remote install runs: a venv of the host's python3, pip with no index.
    venv = tmp_path / "venv"
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
         "--no-compile", "--find-links", str(wheels[0].parent), f"rbee[worker]=={__version__}"],
        check=True,
    )  # fmt: skip
    args = WorkerArgs(
        worker_id="w312",
        hive="py312",
        model="gemma3-270m",
        model_path=str(gguf),
        port=free_port(),
        ctx_size=512,
        queen_url="http://127.0.0.1:9",
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RBEE_TOKEN")}
    with subprocess.Popen(args.command(str(venv / "bin" / "python")), env=env) as worker:
        try:
            deadline = time.monotonic() + 60
            while not _idle(args.url):
                assert worker.poll() is None, "the worker exited"
                assert time.monotonic() < deadline, "the worker did not load"
                time.sleep(0.2)
            body = {"prompt": "The bee", "max_tokens": 4, "temperature": 0}
            answer = httpx.post(f"{args.url}/v1/completions", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
        finally:
            worker.kill()


def _idle(url: str) -> bool:
    try:
        return bool(httpx.get(f"{url}/health", timeout=1).json()["state"] == "idle")
    except (httpx.HTTPError, ValueError, KeyError):
        return False
