"""The operator's credentials on this machine, made on first use and kept private (0600):

- `~/.local/state/rbee/cluster.token`: the cluster token, the operator's key to the queen's
  front door when the YAML's `queen.token` names none (the demo: nobody has to make one);
- `~/.local/state/rbee/tls/`: the cluster CA and the queen's own identity (`rbee.pki`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from rbee.paths import state_dir
from rbee.pki import write_private

__all__ = ["TOKEN_FILE", "cluster_token", "tls_dir"]

TOKEN_FILE = "cluster.token"


def cluster_token() -> str:
    """The cluster token stored on this machine, made (once, whoever asks first) if missing."""
    path = state_dir() / TOKEN_FILE
    if not path.exists():
        # Written aside, then linked: of two processes racing here, one token wins, whole.
        staged = write_private(path.with_name(f".{TOKEN_FILE}.{os.getpid()}"), _new_token())
        with contextlib.suppress(FileExistsError):
            os.link(staged, path)
        staged.unlink()
    token = path.read_text().strip()
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return token


def tls_dir() -> Path:
    """Where the queen's machine keeps the cluster CA and the queen's identity."""
    return state_dir() / "tls"


def _new_token() -> bytes:
    return secrets.token_urlsafe(32).encode() + b"\n"
