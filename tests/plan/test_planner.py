"""The planner is a pure function: (desired, observed) fixtures in, plan text and JSON out."""

from __future__ import annotations

from typing import Any

import pytest
from syrupy.assertion import SnapshotAssertion

from rbee.config.models import Cluster
from rbee.plan.observed import HiveFacts, Observed
from rbee.plan.planner import plan
from rbee.plan.render import plan_json, plan_text
from rbee.wire import ModelEntry, WorkerProcess

SHA = "a" * 64
OTHER_SHA = "b" * 64
QUEEN = "http://127.0.0.1:7833"


def _cluster(replicas: int = 1, slots: int = 2, ctx_size: int = 2048, sha: str = SHA) -> Cluster:
    return Cluster.model_validate(
        {
            "hives": [{"name": "local", "host": "localhost"}],
            "models": [{"name": "gemma3-270m", "source": "file:///m/gemma.gguf", "sha256": sha}],
            "worker_binaries": [{"name": "cpu"}],
            "deployments": [
                {
                    "model": "gemma3-270m",
                    "worker": "cpu",
                    "hives": ["local"],
                    "replicas": replicas,
                    "slots": slots,
                    "ctx_size": ctx_size,
                }
            ],
        }
    )


def _model(sha: str = SHA) -> ModelEntry:
    return ModelEntry(
        name="gemma3-270m", source="file:///m/gemma.gguf", sha256=sha, size_bytes=1, path="/p"
    )


def _worker(index: int, pid: int, **spec: Any) -> WorkerProcess:
    fields: dict[str, Any] = {
        "pid": pid,
        "worker_id": f"local.gemma3-270m.{index}",
        "hive": "local",
        "model": "gemma3-270m",
        "worker_binary": "cpu",
        "port": 9000 + index,
        "url": f"http://127.0.0.1:{9000 + index}",
        "slots": 2,
        "ctx_size": 2048,
        "device": "cpu",
        "started_at": 1000.0 + pid,
    }
    fields.update(spec)
    return WorkerProcess(**fields)


def _up(*workers: WorkerProcess, sha: str = SHA) -> Observed:
    facts = HiveFacts(name="local", running=True, models=[_model(sha)], workers=list(workers))
    return Observed(hives={"local": facts})


SCENARIOS: dict[str, tuple[Cluster, Observed]] = {
    "empty_cluster": (_cluster(), Observed()),
    "hive_up_without_model": (
        _cluster(),
        Observed(hives={"local": HiveFacts(name="local", running=True)}),
    ),
    "in_sync": (_cluster(), _up(_worker(0, 100))),
    "scale_up_1_to_3": (_cluster(replicas=3), _up(_worker(0, 100))),
    "scale_down_2_to_1": (_cluster(replicas=1), _up(_worker(0, 100), _worker(1, 101))),
    "scale_to_zero": (_cluster(replicas=0), _up(_worker(0, 100))),
    "ctx_size_change_restarts_worker": (_cluster(ctx_size=4096), _up(_worker(0, 100))),
    "model_sha_change_replaces_model_and_worker": (_cluster(sha=OTHER_SHA), _up(_worker(0, 100))),
    "dead_worker_respawned": (_cluster(replicas=2), _up(_worker(1, 101))),
    "duplicate_replica_stopped": (_cluster(), _up(_worker(0, 100), _worker(0, 105))),
    "unknown_worker_stopped": (
        _cluster(),
        _up(_worker(0, 100), _worker(0, 300, worker_id="handmade", model="other")),
    ),
    "hive_down_with_error": (
        _cluster(),
        Observed(hives={"local": HiveFacts(name="local", running=False, error="HTTP 500")}),
    ),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_plan_text(name: str, snapshot: SnapshotAssertion) -> None:
    desired, observed = SCENARIOS[name]
    assert plan_text(plan(desired, observed, QUEEN)) == snapshot


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_plan_json(name: str, snapshot: SnapshotAssertion) -> None:
    desired, observed = SCENARIOS[name]
    assert plan_json(plan(desired, observed, QUEEN)) == snapshot


def test_in_sync_cluster_has_no_changes() -> None:
    desired, observed = SCENARIOS["in_sync"]
    assert not plan(desired, observed).has_changes


def test_workers_wait_for_their_model_and_hive() -> None:
    desired, observed = SCENARIOS["empty_cluster"]
    actions = {a.address: a for a in plan(desired, observed).actions}
    assert actions["model.local.gemma3-270m"].depends_on == ["hive.local"]
    assert actions["worker.local.gemma3-270m[0]"].depends_on == [
        "hive.local",
        "model.local.gemma3-270m",
    ]


def test_scale_down_stops_the_highest_replica() -> None:
    desired, observed = SCENARIOS["scale_down_2_to_1"]
    [action] = plan(desired, observed).actions
    assert (action.op, action.pid) == ("delete", 101)
