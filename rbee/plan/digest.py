"""Fingerprints of observations (for stale saved plans), and clusters and plans with their
secrets hidden."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from rbee.config.models import Cluster
from rbee.net import SENSITIVE, hide_url_secrets
from rbee.plan.observed import Observed
from rbee.wire import RpcServerProcess
from rbee.wire.plan import Plan

__all__ = ["SENSITIVE", "observed_digest", "redacted", "redacted_plan"]


def observed_digest(observed: Observed) -> str:
    """A sha256 over the facts a plan acts on: which hives run, their models and workers.

    Heartbeat timings and load are left out: they change every second without changing
    what a plan would do.
    """
    facts: dict[str, Any] = {}
    for name, hive in sorted(observed.hives.items()):
        facts[name] = {
            "running": hive.running,
            "models": sorted((m.name, m.sha256) for m in hive.models),
            "worker_binaries": sorted(
                (b.name, json.dumps(b.spec, sort_keys=True)) for b in hive.worker_binaries
            ),
            "workers": sorted((w.worker_id, w.pid, *w.spec().values()) for w in hive.workers),
            # A server started or gone since the plan was made changes what it does.
            **(
                {"rpc_servers": sorted((r.pid, *_rpc_spec(r)) for r in hive.rpc_servers)}
                if hive.rpc_servers
                else {}
            ),
            "ssh": None
            if hive.ssh is None
            else (hive.ssh.reachable, hive.ssh.rbee_version, hive.ssh.hive_running),
        }
    if observed.silenced:
        # A worker gone silent since the plan was made is replaced by a fresh plan.
        facts["silenced"] = sorted(observed.silenced.items())
    if observed.sources:
        # A Hub file that changed under a branch makes a saved plan stale too.
        facts["sources"] = {s: f.sha256 for s, f in sorted(observed.sources.items())}
    canonical = json.dumps(facts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def redacted(cluster: Cluster) -> dict[str, Any]:
    """The cluster as JSON data with every secret replaced by "(sensitive)": the queen's
    token, and what URLs carry (a source's `user:password@`, its query's values)."""
    data = cluster.model_dump(mode="json")
    if data["queen"].get("token"):
        data["queen"]["token"] = SENSITIVE
    for model in data.get("models") or []:
        model["source"] = hide_url_secrets(model["source"])
    for binary in data.get("worker_binaries") or []:
        if binary.get("url"):
            binary["url"] = hide_url_secrets(binary["url"])
    return data


def redacted_plan(plan: Plan, secrets: Iterable[str | None] = ()) -> dict[str, Any]:
    """The plan as JSON data with what its actions keep for apply hidden too: every URL's
    secrets (a source's `user:password@`, its query's values) and each of `secrets`, wherever
    they appear (sources, reasons, changes, notes). It reads as the plan does; one whose
    sources carry credentials cannot be applied."""
    hidden = [secret for secret in secrets if secret]

    def hide(value: Any) -> Any:
        if isinstance(value, str):
            value = hide_url_secrets(value)
            for secret in hidden:
                value = value.replace(secret, SENSITIVE)
            return value
        if isinstance(value, dict):
            return {key: hide(item) for key, item in value.items()}
        if isinstance(value, list):
            return [hide(item) for item in value]
        return value

    data: dict[str, Any] = hide(plan.model_dump(mode="json"))
    return data


def _rpc_spec(server: RpcServerProcess) -> tuple[str, str, int, int | None]:
    return (server.worker_binary, server.device, server.port, server.threads)
