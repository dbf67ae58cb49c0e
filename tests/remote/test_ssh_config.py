"""Reading ~/.ssh/config into hive stanzas."""

from __future__ import annotations

from rbee.config.models import Hive
from rbee.remote.ssh_config import hives_from_ssh_config

CONFIG = """
# lab machines
Host gpu1 gpu1.lab
    HostName 10.0.0.11
    User rbee
    Port 2222
    IdentityFile ~/.ssh/id_ed25519
    IdentityFile ~/.ssh/other

Host *.internal !bastion
    User ops

Host mac-mini
    hostname=192.168.1.20   # trailing comment
    user = me

Match host foo
    User nobody
"""


def test_concrete_hosts_become_network_hives() -> None:
    hives = hives_from_ssh_config(CONFIG)
    assert hives == [
        {
            "name": "gpu1",
            "host": "10.0.0.11",
            "mode": "network",
            "ssh": {"user": "rbee", "port": 2222, "key": "~/.ssh/id_ed25519"},
        },
        {
            "name": "gpu1.lab",
            "host": "10.0.0.11",
            "mode": "network",
            "ssh": {"user": "rbee", "port": 2222, "key": "~/.ssh/id_ed25519"},
        },
        {"name": "mac-mini", "host": "192.168.1.20", "mode": "network", "ssh": {"user": "me"}},
    ]


def test_every_imported_stanza_is_a_valid_hive() -> None:
    hives = [Hive.model_validate(stanza) for stanza in hives_from_ssh_config(CONFIG)]
    assert [(h.name, h.effective_mode) for h in hives] == [
        ("gpu1", "network"),
        ("gpu1.lab", "network"),
        ("mac-mini", "network"),
    ]


def test_an_empty_config_imports_nothing() -> None:
    assert hives_from_ssh_config("") == []
