"""rbee installed from the wheelhouse onto a namespace host, its hive started and stopped."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
import pytest

from rbee import __version__
from rbee.observe.ssh import probe
from rbee.remote.connect import connect
from rbee.remote.daemon import start_hive, stop_hive
from rbee.remote.install import install, installed_version, uninstall
from rbee.remote.wheelhouse import build_wheelhouse
from tests.fixtures.netns import SshHost

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
