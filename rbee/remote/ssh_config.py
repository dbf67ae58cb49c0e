"""`~/.ssh/config` Host entries as cluster-YAML hive stanzas (`rbee hive import-ssh`)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["hives_from_ssh_config"]

_WILDCARD = re.compile(r"[*?!]")
_NAME_OK = re.compile(r"[^A-Za-z0-9._-]")


def hives_from_ssh_config(text: str) -> list[dict[str, Any]]:
    """One `mode: network` hive per concrete Host alias (wildcard patterns are skipped)."""
    hives: list[dict[str, Any]] = []
    current: list[dict[str, Any]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, value = line.replace("=", " ", 1).partition(" ")
        key, value = key.lower(), value.strip().strip('"')
        if key == "match":
            current = []  # Match blocks are conditional: nothing to import from them.
        elif key == "host":
            current = [
                {
                    "name": _NAME_OK.sub("-", alias).strip("-."),
                    "host": alias,
                    "mode": "network",
                    "ssh": {},
                }
                for alias in value.split()
                if not _WILDCARD.search(alias)
            ]
            hives.extend(current)
        for hive in current:
            if key == "hostname":
                hive["host"] = value
            elif key == "user":
                hive["ssh"]["user"] = value
            elif key == "port" and value.isdigit():
                hive["ssh"]["port"] = int(value)
            elif key == "identityfile":
                hive["ssh"].setdefault("key", value)
    return [h for h in hives if h["name"]]
