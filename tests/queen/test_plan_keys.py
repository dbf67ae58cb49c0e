"""Plan keys: what CI on a pull request needs and no more. A plan key plans and reads the
control plane's state; everything else is a 403, and the plan it gets holds no secret.

What a route answers, the queen's app in this process (`tests.fixtures.in_process_queen`);
the plan a CI job saves, a real queen process that the keeper plans through as a CI job would,
with the plan key in $RBEE_API_KEY and the YAML's secrets in its environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rbee.queen.control.store import Store
from rbee.queen.http.auth import Keys
from tests.fixtures.in_process_queen import QUEEN_URL, InProcessQueen, in_process_queen
from tests.fixtures.ports import free_port
from tests.fixtures.scripted import ScriptedQueen

TOKEN = "cluster-secret-0d1e"
PASSWORD = "hub-password-7c2f"
SIGNATURE = "signature-9b4a"


@dataclass
class Keyed:
    queen: InProcessQueen
    plan: dict[str, str]
    admin: dict[str, str]

    def call(self, method: str, path: str, who: dict[str, str]) -> httpx.Response:
        return self.queen.client.request(method, path, json={}, headers=who)


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Keyed]:
    with in_process_queen(tmp_path, monkeypatch, TOKEN) as queen:
        yield Keyed(queen, _bearer(queen.key("plan", "plan")), _bearer(queen.key("admin", "admin")))


@pytest.fixture
def plan_key_of_a_queen_process(tmp_path: Path) -> Iterator[tuple[ScriptedQueen, str]]:
    queen = ScriptedQueen.start(tmp_path, token=TOKEN)
    made = httpx.post(
        f"{queen.url}/v1/keys", json={"name": "plan", "scope": "plan"}, headers=queen.headers
    )
    assert made.status_code == 201, made.text
    assert made.json()["scope"] == "plan"
    yield queen, made.json()["key"]
    queen.stop()


def _cluster(queen_url: str) -> dict[str, Any]:
    """A cluster whose local hive is down, so that the plan starts it and fetches the model
    from a source with credentials."""
    return {
        "queen": {"url": queen_url, "token": TOKEN},
        "hives": [{"name": "local", "host": "127.0.0.1", "port": free_port()}],
        "models": [
            {
                "name": "m",
                "source": f"https://ci:{PASSWORD}@models.example/m.gguf?sig={SIGNATURE}",
                "sha256": "a" * 64,
            }
        ],
        "worker_binaries": [{"name": "cpu"}],
        "deployments": [{"model": "m", "worker": "cpu"}],
    }


def test_a_plan_key_plans_and_reads_the_state(keyed: Keyed) -> None:
    cluster = _cluster(QUEEN_URL)
    plans = [
        keyed.queen.client.post("/v1/plan", json={"cluster": cluster}, headers=who)
        for who in (keyed.plan, keyed.admin)
    ]
    assert [p.status_code for p in plans] == [200, 200], plans[0].text
    mine, admins = ([a["address"] for a in p.json()["actions"]] for p in plans)
    assert "model.local.m" in mine and mine == admins
    for path in ("/v1/status", "/v1/hives", "/v1/workers", "/v1/lock", "/v1/history"):
        assert keyed.call("GET", path, keyed.plan).status_code == 200, path


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/apply"),
        ("POST", "/v1/down"),
        ("POST", "/v1/shutdown"),
        ("POST", "/v1/lock/force-unlock"),
        ("GET", "/v1/keys"),
        ("POST", "/v1/keys"),
        ("DELETE", "/v1/keys/admin"),
        ("POST", "/v1/hives/local/refresh-capabilities"),
        ("POST", "/v1/workers/w/retire"),
        ("GET", "/v1/logs/queen"),
        ("GET", "/metrics"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/jobs"),
    ],
)
def test_a_plan_key_may_change_nothing_nor_read_logs_nor_infer(
    keyed: Keyed, method: str, path: str
) -> None:
    refused = keyed.call(method, path, keyed.plan)
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["code"] == "insufficient_scope"
    assert error["message"].startswith(f"this key's scope does not allow {method} {path}: ")


def test_the_plan_a_plan_key_gets_holds_no_secret(
    plan_key_of_a_queen_process: tuple[ScriptedQueen, str], tmp_path: Path
) -> None:
    """The keeper expands the YAML's `${VAR}`s and sends the cluster; what comes back to a plan
    key, saved and rendered as a CI job would, shows none of them."""
    queen, plan_key = plan_key_of_a_queen_process
    cluster = _cluster(queen.url)
    cluster["queen"] = {"url": queen.url, "token": "${RBEE_TOKEN}"}
    cluster["models"][0]["source"] = (
        "https://ci:${HUB_PASSWORD}@models.example/m.gguf?sig=${HUB_SIGNATURE}"
    )
    (tmp_path / "cluster.yaml").write_text(json.dumps(cluster))  # JSON is YAML
    env = {
        "HOME": str(tmp_path),
        "PATH": os.environ["PATH"],
        "RBEE_API_KEY": plan_key,
        "RBEE_TOKEN": TOKEN,
        "HUB_PASSWORD": PASSWORD,
        "HUB_SIGNATURE": SIGNATURE,
    }
    planned = subprocess.run(
        [sys.executable, "-m", "rbee.cli", "plan", "-f", "cluster.yaml", "--out", "plan.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert planned.returncode == 0, planned.stderr
    saved = (tmp_path / "plan.json").read_text()
    assert "model.local.m" in saved
    assert "https://(sensitive)@models.example/m.gguf?sig=(sensitive)" in saved
    for secret in (TOKEN, PASSWORD, SIGNATURE):
        assert secret not in saved
        assert secret not in planned.stdout


def test_a_database_from_before_plan_keys_keeps_its_keys_and_takes_plan_keys(
    tmp_path: Path,
) -> None:
    db = tmp_path / "queen.db"
    Store(db).close()
    secret = "rbee_made-before-plan-keys"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    with sqlite3.connect(db) as before:  # api_keys as the sixth migration left it
        before.executescript(
            f"""
            DROP TABLE api_keys;
            CREATE TABLE api_keys (
                name TEXT NOT NULL,
                hash TEXT UNIQUE,
                prefix TEXT NOT NULL,
                scope TEXT NOT NULL CHECK (scope IN ('inference', 'admin')),
                rpm INTEGER,
                tpm INTEGER,
                created_at REAL NOT NULL,
                revoked_at REAL
            );
            CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;
            INSERT INTO api_keys (name, hash, prefix, scope, rpm, created_at)
                VALUES ('app', '{digest}', 'rbee_made', 'inference', 60, 1);
            PRAGMA user_version = 6;
            """
        )
    store = Store(db)
    keys = Keys(store.connection)
    kept = keys.lookup(secret)
    assert kept is not None and (kept.name, kept.scope) == ("app", "inference")
    assert kept.limiter is not None and kept.limiter.rpm == 60
    made, _ = keys.create("ci", "plan")
    assert made.scope == "plan"
    assert [k.name for k in keys.list()] == ["app", "ci"]
    store.close()
