"""rbee installed from the wheelhouse onto a namespace host, its hive started and stopped."""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from packaging.utils import canonicalize_name

from rbee import __version__, clients
from rbee.clients import use_identity
from rbee.observe.ssh import probe
from rbee.pki import expires_at
from rbee.remote import REMOTE_VENV
from rbee.remote.connect import connect
from rbee.remote.daemon import start_hive, stop_hive
from rbee.remote.install import install, installed_version, uninstall
from rbee.remote.requirements import pins_for, read_lock
from rbee.remote.wheelhouse import HIVE_LOCK, build_wheelhouse, project_dir
from rbee.wire import WorkerArgs
from tests.fixtures.netns import SshHost
from tests.fixtures.pki import authority, client_tls, identity
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
    install_host: SshHost, wheelhouse_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hive gets its TLS identity over SSH (never on a command line), serves mutual TLS
    with it, and answers only the queen's certificate."""
    hive = install_host.hive(name="remote", port=7835)
    bundle = authority().issue("hive", hive.name, [hive.host])
    wheels = build_wheelhouse(wheelhouse_dir)
    monkeypatch.setattr(clients, "_identity", None)  # restored after: process-wide state
    use_identity(identity("queen", "queen"))  # as the queen calls its hives
    anonymous = ssl.create_default_context(cafile=authority().directory / "ca.pem")

    async def scenario() -> None:
        async with await connect(hive) as conn:
            assert await installed_version(conn) is None
            assert await install(conn, wheels, hive=hive.name) == __version__
            _assert_runs_the_locked_versions(install_host)
            # A second install finds everything in place and sends nothing.
            assert await install(conn, wheels, hive=hive.name) == __version__

            pid = await start_hive(conn, hive, "http://10.0.0.1:7833", bundle)
            try:
                assert hive.url.startswith("https://")
                queen = client_tls("queen", "queen")
                worker = client_tls("worker", "remote/w0")
                async with httpx.AsyncClient(base_url=hive.url, verify=queen, timeout=5) as http:
                    health = (await http.get("/health")).json()
                    assert health["service"] == "rbee-hive" and health["pid"] == pid
                    assert health["tls_expires_at"] == expires_at(bundle).timestamp()
                    assert (await http.get("/v1/models")).status_code == 200
                async with httpx.AsyncClient(base_url=hive.url, verify=worker, timeout=5) as http:
                    assert (await http.get("/v1/models")).status_code == 403
                async with httpx.AsyncClient(
                    base_url=hive.url, verify=anonymous, timeout=5
                ) as http:
                    with pytest.raises(httpx.TransportError):  # no certificate: no handshake
                        await http.get("/v1/models")
                kept = install_host.home / ".local/state/rbee/tls/hive.pem"
                assert kept.read_bytes() == bundle
                assert stat.S_IMODE(kept.stat().st_mode) == 0o600
                processes = install_host.run("ps", "-eww", "-o", "args").stdout
                key_line = bundle.decode().split("PRIVATE KEY-----\n")[1].splitlines()[0]
                assert "rbee-hive" in processes and key_line not in processes

                facts = await probe(hive)
                assert facts.rbee_version == __version__
                assert facts.hive_running and facts.hive_pid == pid and facts.hive_port == 7835
                assert await start_hive(conn, hive, "http://10.0.0.1:7833", bundle) == pid
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
        queen_url="https://127.0.0.1:9",
        identity=str(identity("worker", "py312/w312")),
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
            answer = httpx.post(
                f"{args.url}/v1/completions",
                json=body,
                timeout=60,
                verify=client_tls("queen", "queen"),
            )
            assert answer.status_code == 200, answer.text
        finally:
            worker.kill()


def _idle(url: str) -> bool:
    try:
        health = httpx.get(f"{url}/health", timeout=1, verify=client_tls("queen", "queen"))
        return bool(health.json()["state"] == "idle")
    except (httpx.HTTPError, ValueError, KeyError):
        return False
