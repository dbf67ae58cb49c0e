"""The queen's SQLite: the last applied cluster and apply history. Never on the hot path."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS applies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    holder TEXT NOT NULL,
    summary TEXT NOT NULL,
    result TEXT
);
CREATE TABLE IF NOT EXISTS desired (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cluster TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


class Store:
    """A small SQLite database in the queen's state directory."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def desired(self) -> dict[str, Any] | None:
        """The cluster of the last apply, as JSON-ready data."""
        row = self._db.execute("SELECT cluster FROM desired WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else None

    def begin_apply(self, holder: str, summary: dict[str, int], cluster: dict[str, Any]) -> int:
        now = time.time()
        with self._db:
            self._db.execute(
                "INSERT INTO desired (id, cluster, updated_at) VALUES (1, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET cluster = excluded.cluster, "
                "updated_at = excluded.updated_at",
                (json.dumps(cluster), now),
            )
            cursor = self._db.execute(
                "INSERT INTO applies (started_at, holder, summary) VALUES (?, ?, ?)",
                (now, holder, json.dumps(summary)),
            )
        return int(cursor.lastrowid or 0)

    def end_apply(self, apply_id: int, result: str) -> None:
        self._db.execute(
            "UPDATE applies SET finished_at = ?, result = ? WHERE id = ?",
            (time.time(), result, apply_id),
        )
