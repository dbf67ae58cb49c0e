"""Network hives over SSH: connections, the wheelhouse, install/uninstall, hive start/stop.

The constants below say where rbee lives on a remote machine, relative to the SSH user's
home: remote commands and SFTP paths start there, so paths stay quotable constants rather
than `$HOME` expansions.
"""

from __future__ import annotations

__all__ = [
    "REMOTE_CACHE",
    "REMOTE_HIVE_IDENTITY",
    "REMOTE_HIVE_LOG",
    "REMOTE_HIVE_PID",
    "REMOTE_HIVE_PORT",
    "REMOTE_STATE",
    "REMOTE_VENV",
    "REMOTE_WHEELHOUSE",
]

REMOTE_VENV = ".local/share/rbee/venv"
REMOTE_STATE = ".local/state/rbee"
REMOTE_CACHE = ".cache/rbee"
REMOTE_WHEELHOUSE = f"{REMOTE_CACHE}/wheelhouse"
REMOTE_HIVE_PID = f"{REMOTE_STATE}/hive.pid"
REMOTE_HIVE_PORT = f"{REMOTE_STATE}/hive.port"
REMOTE_HIVE_LOG = f"{REMOTE_STATE}/hive.log"
#: The hive's TLS identity, from the queen (relative to the hive user's home, as every path here).
REMOTE_HIVE_IDENTITY = f"{REMOTE_STATE}/tls/hive.pem"
