"""Real SSH hosts for these tests: network namespaces with their own users and sshd (root only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.netns import SshHost, netns_hosts, require_lab, write_known_hosts

# Hosts 0-2 are probed in every test (and briefly broken by some, always restored); host 3 is
# the one rbee gets installed on, so the others keep "nothing installed".
N_HOSTS = 4


@pytest.fixture(scope="session")
def ssh_hosts() -> Iterator[list[SshHost]]:
    """Four namespace hosts with sshd, torn down at the end of the session (also on failure)."""
    require_lab()
    with netns_hosts(N_HOSTS) as hosts:
        yield hosts


@pytest.fixture
def hosts(ssh_hosts: list[SshHost]) -> Iterator[list[SshHost]]:
    """The three probe hosts; their shared known_hosts is rewritten afterwards."""
    probed = ssh_hosts[:3]
    yield probed
    write_known_hosts(probed[0].known_hosts, ssh_hosts)


@pytest.fixture(scope="session")
def install_host(ssh_hosts: list[SshHost]) -> SshHost:
    """The host rbee gets installed on."""
    return ssh_hosts[3]


@pytest.fixture(scope="session")
def wheelhouse_dir() -> Path:
    """Kept across sessions, so the wheelhouse is built once per source change."""
    return Path.home() / ".cache" / "rbee-test" / "wheelhouse"
