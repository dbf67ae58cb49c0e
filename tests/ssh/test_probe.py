"""The SSH probe against real sshd hosts in network namespaces."""

from __future__ import annotations

import asyncio
import time

import psutil
import pytest

from rbee.config.models import Hive
from rbee.observe.ssh import probe, probe_all
from rbee.remote.connect import SshConnections, SshFailure, connect
from rbee.wire import SshFacts
from tests.fixtures.netns import (
    SshHost,
    bring_up,
    regenerate_host_key,
    start_sshd,
    stop_sshd,
    take_down,
    write_known_hosts,
)


def _probe_all(hives: list[Hive], timeout_s: float = 5.0) -> dict[str, SshFacts]:
    return asyncio.run(probe_all(hives, timeout_s=timeout_s))


def _others_fine(facts: dict[str, SshFacts], broken: str) -> None:
    for name, fact in facts.items():
        if name != broken:
            assert fact.reachable, fact.error
            assert fact.error_kind is None


def test_probe_of_three_hosts_reports_their_facts(hosts: list[SshHost]) -> None:
    facts = _probe_all([h.hive() for h in hosts])
    assert set(facts) == {"h0", "h1", "h2"}
    for fact in facts.values():
        assert fact.reachable and fact.error is None
        assert fact.os is not None and fact.os.startswith("Linux")
        assert fact.arch
        assert fact.python_version is not None and fact.python_version.startswith("3.11.")
        assert fact.rbee_version is None
        assert fact.hive_running is False and fact.hive_pid is None
        assert fact.free_disk_bytes is not None and fact.free_disk_bytes > 0


def test_unknown_host_key_is_refused(hosts: list[SshHost]) -> None:
    known = write_known_hosts(hosts[0].known_hosts.with_name("known_hosts_partial"), hosts[1:])
    hives = [hosts[0].hive(known_hosts=str(known))] + [h.hive() for h in hosts[1:]]
    facts = _probe_all(hives)
    assert facts["h0"].reachable is False
    assert facts["h0"].error_kind == "host_key_unknown"
    assert f"host key of {hosts[0].address} is not in {known}" in (facts["h0"].error or "")
    assert "ssh-keyscan" in (facts["h0"].error or "")
    _others_fine(facts, "h0")


def test_missing_known_hosts_file_is_host_key_unknown(hosts: list[SshHost]) -> None:
    missing = hosts[0].known_hosts.with_name("does-not-exist")
    facts = asyncio.run(probe(hosts[0].hive(known_hosts=str(missing))))
    assert facts.error_kind == "host_key_unknown"
    assert str(missing) in (facts.error or "")


def test_changed_host_key_is_refused_as_changed(hosts: list[SshHost]) -> None:
    regenerate_host_key(hosts[1])  # known_hosts keeps the old key; the fixture restores it
    facts = _probe_all([h.hive() for h in hosts])
    assert facts["h1"].reachable is False
    assert facts["h1"].error_kind == "host_key_changed"
    assert "CHANGED" in (facts["h1"].error or "")
    assert "man-in-the-middle" in (facts["h1"].error or "")
    _others_fine(facts, "h1")


def test_wrong_key_is_auth_failed(hosts: list[SshHost]) -> None:
    wrong = hosts[0].host_key  # a valid private key, just not an authorized one
    hives = [hosts[0].hive(key=str(wrong))] + [h.hive() for h in hosts[1:]]
    facts = _probe_all(hives)
    assert facts["h0"].error_kind == "auth_failed"
    assert str(wrong) in (facts["h0"].error or "")
    _others_fine(facts, "h0")


def test_wrong_user_is_auth_failed(hosts: list[SshHost]) -> None:
    hives = [hosts[0].hive(user="nobody")] + [h.hive() for h in hosts[1:]]
    facts = _probe_all(hives)
    assert facts["h0"].error_kind == "auth_failed"
    assert f"nobody@{hosts[0].address}" in (facts["h0"].error or "")
    _others_fine(facts, "h0")


def test_stopped_sshd_is_connection_refused(hosts: list[SshHost]) -> None:
    stop_sshd(hosts[2])
    try:
        facts = _probe_all([h.hive() for h in hosts])
    finally:
        start_sshd(hosts[2])
    assert facts["h2"].error_kind == "connection_refused"
    assert f"{hosts[2].address}:22" in (facts["h2"].error or "")
    _others_fine(facts, "h2")


def test_host_down_fails_within_the_timeout(hosts: list[SshHost]) -> None:
    take_down(hosts[0])
    started = time.monotonic()
    try:
        facts = _probe_all([h.hive() for h in hosts], timeout_s=1.0)
    finally:
        bring_up(hosts[0])
    assert time.monotonic() - started < 2.5
    assert facts["h0"].reachable is False
    assert facts["h0"].error_kind in ("timeout", "unreachable")
    _others_fine(facts, "h0")


def test_connect_raises_one_failure_class_with_the_kind(hosts: list[SshHost]) -> None:
    with pytest.raises(SshFailure) as caught:
        asyncio.run(connect(hosts[0].hive(user="nobody")))
    assert caught.value.kind == "auth_failed"
    assert caught.value.message.startswith("hive h0: ")
    assert caught.value.hint


def test_connections_are_reused_within_a_run(hosts: list[SshHost]) -> None:
    hive = hosts[0].hive()
    same_machine = hive.model_copy(update={"name": "other", "port": 7836})

    async def run() -> tuple[list[bool], bool]:
        async with SshConnections() as connections:
            first = await connections.get(hive)
            facts = await probe_all([hive, same_machine], connections=connections)
            reused = [
                await connections.get(hive) is first,
                await connections.get(same_machine) is first,
                all(f.reachable for f in facts.values()),
            ]
        return reused, first.is_closed()

    reused, closed = asyncio.run(run())
    assert reused == [True, True, True]
    assert closed


def test_probe_all_bounds_concurrency(hosts: list[SshHost]) -> None:
    facts = asyncio.run(probe_all([h.hive() for h in hosts], concurrency=1))
    assert all(f.reachable for f in facts.values())


def _sessions(host: SshHost) -> set[int]:
    """Pids of the sshd processes serving a session of the host's user (not its listener)."""
    return {
        proc.pid
        for proc in psutil.process_iter(["name", "username"])
        if proc.info["name"] == "sshd" and proc.info["username"] == host.user
    }


def test_a_pool_reuses_its_connection_and_reconnects_once_it_died(hosts: list[SshHost]) -> None:
    async def run() -> None:
        hive = hosts[0].hive()
        before = _sessions(hosts[0])  # sessions other tests may still be closing
        async with SshConnections(idle_s=300) as pool:
            assert (await probe(hive, connections=pool)).error is None
            ours = _sessions(hosts[0]) - before
            assert len(ours) == 1
            assert (await probe(hive, connections=pool)).error is None
            assert ours <= _sessions(hosts[0])  # the same session: no second key exchange
            assert not _sessions(hosts[0]) - before - ours
            for pid in ours:  # the session dies (sshd restarted, host rebooted, ...)
                psutil.Process(pid).kill()
            await asyncio.sleep(0.2)
            again = await probe(hive, connections=pool)
            assert again.reachable and again.error is None, again.error
            assert _sessions(hosts[0]) - before - ours

    asyncio.run(run())


def test_a_pool_closes_connections_idle_longer_than_its_limit(hosts: list[SshHost]) -> None:
    async def run() -> None:
        async with SshConnections(idle_s=0.1) as pool:
            first = await pool.get(hosts[0].hive())
            await asyncio.sleep(0.3)
            await pool.get(hosts[1].hive())  # any use sweeps the idle ones
            assert first.is_closed()
            assert not (await pool.get(hosts[0].hive())).is_closed()

    asyncio.run(run())
