"""The planner is a pure function: one case file (desired, observed, options) per scenario in
tests/plan/cases/, its text and JSON plans pinned as snapshots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from syrupy.assertion import SnapshotAssertion

from rbee.config.models import Cluster
from rbee.plan.observed import Observed
from rbee.plan.planner import plan
from rbee.plan.render import plan_dot, plan_json, plan_markdown, plan_text
from rbee.wire.plan import Plan

CASES = Path(__file__).parent / "cases"
NAMES = sorted(p.stem for p in CASES.glob("*.yaml"))
QUEEN = "http://127.0.0.1:7833"


def _case(name: str) -> Plan:
    doc: dict[str, Any] = YAML(typ="safe").load((CASES / f"{name}.yaml").read_text())
    desired = Cluster.model_validate(doc["desired"])
    observed = Observed.model_validate(doc["observed"])
    return plan(desired, observed, QUEEN, rbee_version="0.1.0", **doc.get("options", {}))


@pytest.mark.parametrize("name", NAMES)
def test_plan_text(name: str, snapshot: SnapshotAssertion) -> None:
    assert plan_text(_case(name)) == snapshot


@pytest.mark.parametrize("name", NAMES)
def test_plan_json(name: str, snapshot: SnapshotAssertion) -> None:
    """The plan as JSON, its actions and notes pinned; the declared cluster it carries is the
    case's input with every default filled in, so it is left out (a new YAML field with a
    default changes no plan)."""
    body = json.loads(plan_json(_case(name)))
    assert body.pop("cluster")["version"] == 1
    assert body == snapshot


def test_in_sync_cluster_has_no_changes() -> None:
    assert not _case("in_sync").has_changes


def test_workers_wait_for_their_model_and_hive() -> None:
    actions = {a.address: a for a in _case("empty_cluster").actions}
    assert actions["model.local.gemma3-270m"].depends_on == ["hive.local"]
    assert actions["worker_binary.local.cpu"].depends_on == ["hive.local"]
    assert actions["worker.local.gemma3-270m[0]"].depends_on == [
        "hive.local",
        "worker_binary.local.cpu",
        "model.local.gemma3-270m",
    ]


def test_scale_down_stops_the_highest_replica() -> None:
    [action] = _case("scale_down_2_to_1").actions
    assert (action.op, action.pid) == ("delete", 101)


def test_rolling_replace_chains_replicas_one_after_another() -> None:
    actions = _case("rolling_replace_of_three_replicas").actions
    assert [a.depends_on for a in actions] == [
        [],
        ["worker.local.gemma3-270m[0]"],
        ["worker.local.gemma3-270m[1]"],
    ]


def test_prune_deletes_a_removed_hive_after_its_workers() -> None:
    actions = {a.address: a for a in _case("hive_removed_with_prune_is_stopped").actions}
    assert actions["hive.old"].op == "delete"
    assert actions["hive.old"].depends_on == ["worker.old.gemma3-270m[0]"]


def test_target_keeps_only_the_target_and_its_dependencies() -> None:
    addresses = [a.address for a in _case("target_one_worker_brings_its_dependencies").actions]
    assert addresses == [
        "hive.local",
        "worker_binary.local.cpu",
        "model.local.gemma3-270m",
        "worker.local.gemma3-270m[1]",
    ]


def test_refresh_only_plans_no_action() -> None:
    drifted = _case("refresh_only_reports_drift")
    assert drifted.actions == [] and len(drifted.drift) == 2
    assert drifted.has_changes


def test_unreachable_hive_is_an_error_and_other_hives_are_planned() -> None:
    the_plan = _case("network_hive_unreachable_others_proceed")
    assert [e.address for e in the_plan.errors] == ["hive.gpu1"]
    assert {a.hive for a in the_plan.actions} == {"a"}


def test_secrets_never_reach_a_plan() -> None:
    desired = Cluster.model_validate({"queen": {"token": "s3cret-value"}})
    the_plan = plan(desired, Observed())
    assert "s3cret-value" not in plan_json(the_plan)
    assert the_plan.cluster["queen"]["token"] == "(sensitive)"


def test_digest_ignores_heartbeat_timing_but_not_workers() -> None:
    base = _case("worker_heartbeating_is_kept")
    doc = YAML(typ="safe").load((CASES / "worker_heartbeating_is_kept.yaml").read_text())
    doc["observed"]["registry"][0]["last_seen_s"] = 1.7
    again = plan(Cluster.model_validate(doc["desired"]), Observed.model_validate(doc["observed"]))
    assert again.observed_digest == base.observed_digest
    doc["observed"]["hives"]["local"]["workers"][0]["pid"] = 999
    moved = plan(Cluster.model_validate(doc["desired"]), Observed.model_validate(doc["observed"]))
    assert moved.observed_digest != base.observed_digest


def test_a_chat_format_change_replaces_the_worker() -> None:
    [action] = _case("chat_format_change_restarts_worker").actions
    assert (action.op, action.pid) == ("replace", 100)
    assert [(c.field, c.old, c.new) for c in action.changes] == [("chat_format", None, "chatml")]


def test_devices_all_spawns_one_worker_per_gpu_of_the_hive() -> None:
    actions = _case("devices_all_runs_one_worker_per_gpu").actions
    assert [(a.address, a.spawn.device if a.spawn else None) for a in actions] == [
        ("worker.gpubox.gemma3-270m[0]", "cuda:0"),
        ("worker.gpubox.gemma3-270m[1]", "cuda:1"),
    ]


def test_a_hive_that_cannot_run_a_binary_is_an_error_and_the_others_proceed() -> None:
    plan_ = _case("cuda_binary_on_a_hive_without_gpu_is_an_error_others_proceed")
    assert [e.address for e in plan_.errors] == ["worker_binary.cpubox.cuda"]
    assert {a.hive for a in plan_.actions} == {"gpubox"}


def test_an_over_committed_gpu_names_the_bytes_and_places_nothing_on_it() -> None:
    plan_ = _case("gpu_over_committed_is_an_error_naming_bytes")
    [error] = plan_.errors
    assert "GPU cuda:1" in error.message and "need 5084838208 bytes, 1073741824" in error.message
    assert plan_.actions == []


def test_an_unpinned_hub_model_is_fetched_with_the_sha256_the_plan_showed() -> None:
    actions = {a.address: a for a in _case("hf_model_shows_the_hubs_sha256").actions}
    add = actions["model.local.gemma3-270m"]
    assert add.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert "sha256 a5fd3b62230a…" in add.reason


def test_a_hub_problem_known_at_plan_time_blocks_that_model_only() -> None:
    plan_ = _case("hf_missing_repo_is_an_error")
    assert [e.address for e in plan_.errors] == ["model.local.gemma3-270m"]
    assert [a.address for a in plan_.actions] == ["hive.local"]


def test_a_model_three_hives_need_is_fetched_once_and_copied_over_the_lan() -> None:
    actions = {a.address: a for a in _case(
        "three_hives_fetch_a_model_once_and_copy_it_among_themselves"
    ).actions}  # fmt: skip
    seed = actions["model.h0.gemma3-270m"]
    assert seed.peers == []
    for other in ("model.h1.gemma3-270m", "model.h2.gemma3-270m"):
        assert actions[other].peers == ["https://10.0.0.10:7835"]
        assert seed.address in actions[other].depends_on


def test_a_hive_that_holds_the_model_is_a_peer_without_waiting_for_anyone() -> None:
    actions = {a.address: a for a in _case("a_hive_that_holds_the_model_serves_the_others").actions}
    for other in ("model.h1.gemma3-270m", "model.h2.gemma3-270m"):
        assert actions[other].peers == ["https://10.0.0.10:7835"]
        assert "model.h1.gemma3-270m" not in actions[other].depends_on


def test_one_model_in_two_named_deployments_keeps_each_ones_workers() -> None:
    actions = _case("one_model_in_two_deployments_on_one_hive").actions
    assert [(a.address, a.op) for a in actions] == [("worker.gpubox.gemma-gpu[0]", "create")]
    assert actions[0].spawn is not None and actions[0].spawn.worker_id == "gpubox.gemma-gpu.0"


def test_a_runtime_is_compiled_once_per_platform_and_its_wheel_shared() -> None:
    actions = {a.address: a for a in _case("a_runtime_is_compiled_once_per_platform").actions}
    built, shared, other = (actions[f"worker_binary.h{i}.cuda"] for i in range(3))
    assert built.binary is not None and built.binary.peers == []
    assert shared.binary is not None and shared.binary.peers == ["https://10.0.0.10:7835"]
    assert built.address in shared.depends_on
    # h2 runs Python 3.12: a 3.11 wheel would not do, so it compiles its own, at once.
    assert other.binary is not None and other.binary.peers == []
    assert built.address not in other.depends_on


def test_with_peer_fetch_off_every_hive_fetches_from_the_source() -> None:
    actions = _case("peer_fetch_off_every_hive_fetches_from_the_source").actions
    models = [a for a in actions if a.kind == "model"]
    assert len(models) == 3
    assert all(a.peers == [] and a.depends_on == [] for a in models)


@pytest.mark.parametrize(
    "name",
    [
        "empty_cluster",
        "ctx_size_change_restarts_worker",
        "unlisted_model_deleted_with_prune",
        "unlisted_model_kept_without_prune",
        "in_sync",
    ],
)
def test_plan_markdown_for_a_pull_request(name: str, snapshot: SnapshotAssertion) -> None:
    assert plan_markdown(_case(name)) == snapshot


@pytest.mark.parametrize("name", ["empty_cluster", "ctx_size_change_restarts_worker"])
def test_plan_dot_has_a_node_per_action_and_an_edge_per_dependency(
    name: str, snapshot: SnapshotAssertion
) -> None:
    the_plan = _case(name)
    dot = plan_dot(the_plan)
    assert dot == snapshot
    assert dot.count(" [label=") == len(the_plan.actions)
    edges = sum(len(a.depends_on) for a in the_plan.actions)
    assert dot.count(" -> ") == edges


def test_markdown_hides_credentials_in_urls() -> None:
    the_plan = _case("empty_cluster")
    action = the_plan.actions[0].model_copy(
        update={"reason": "install https://alice:s3cret@wheels.example/rbee.whl (cpu)"}
    )
    text = plan_markdown(the_plan.model_copy(update={"actions": [action]}))
    assert "s3cret" not in text and "alice" not in text
    assert "https://(sensitive)&#64;wheels.example/rbee.whl" in text


def test_markdown_from_the_yaml_cannot_inject_into_the_pull_requests_comment() -> None:
    the_plan = _case("ctx_size_change_restarts_worker")
    evil = (
        "x |</details>\n\n**No changes.** <img src=https://t.example/p> "
        "[ok](https://e.example) @team `"
    )
    action = the_plan.actions[0]
    change = action.changes[0].model_copy(update={"old": evil, "new": "``a`|b"})
    action = action.model_copy(update={"reason": evil, "changes": [change]})
    lines = plan_markdown(the_plan.model_copy(update={"actions": [action]})).splitlines()
    row = next(line for line in lines if line.startswith("| 🟠"))
    said = next(line for line in lines if line.startswith("- replace: "))
    for plain in (row, said):  # the reason: text, every active character escaped
        assert "<" not in plain and "@team" not in plain and "**No" not in plain
        assert "[ok](" not in plain and "\\[ok\\](" in plain
    assert row.count(" | ") == 3  # one cell: its pipe is escaped
    # A value is one code span whatever it holds (in code, HTML and mentions are text): a
    # fence longer than its backticks, its pipes escaped, its line breaks JSON's.
    old = json.dumps(evil).replace("|", "\\|")
    assert f'- `ctx_size`: ``{old}`` → ```"``a`\\|b"```' in lines


def test_a_range_within_min_and_max_plans_nothing_and_notes_its_count() -> None:
    the_plan = _case("range_within_min_and_max_is_in_sync")
    assert not the_plan.has_changes
    assert [(n.address, n.message) for n in the_plan.scaling] == [
        ("worker.local.gemma3-270m", "replicas 0..3 (2 live)")
    ]


def test_a_range_below_min_spawns_the_lowest_free_replicas_up_to_min_only() -> None:
    actions = _case("range_below_min_spawns_the_lowest_free_indices").actions
    assert [(a.address, a.op) for a in actions] == [
        ("worker.local.gemma3-270m[0]", "create"),
        ("worker.local.gemma3-270m[2]", "create"),
    ]


def test_a_range_above_max_stops_the_highest_replicas_down_to_max_only() -> None:
    actions = _case("range_above_max_stops_the_highest_down_to_max").actions
    assert [(a.op, a.pid) for a in actions] == [("delete", 101), ("delete", 102)]


@pytest.mark.parametrize(
    ("heard_from", "replaced"),
    [(100_001.0, False), (99_999.0, True)],
    ids=["queen-just-restarted", "queen-listened-a-whole-ttl"],
)
def test_a_never_heard_worker_is_silent_only_once_the_queen_could_have_heard_it(
    heard_from: float, replaced: bool
) -> None:
    """A worker that started long ago and never beat to this queen: replaced only when the
    queen has listened for heartbeats for a whole TTL, never right after a queen restart."""
    doc: dict[str, Any] = YAML(typ="safe").load((CASES / "in_sync.yaml").read_text())
    observed = doc["observed"]
    observed["hives"]["local"]["workers"][0]["started_at"] = observed["at"] - 1000  # loaded
    observed.update(registry=[], heard_from=heard_from)
    the_plan = plan(
        Cluster.model_validate(doc["desired"]), Observed.model_validate(observed), QUEEN
    )
    reasons = [a.reason for a in the_plan.actions if a.op == "replace"]
    assert reasons == (
        ["alive but silent: no heartbeat reached the queen: worker restarts"] if replaced else []
    )


def test_a_worker_on_two_gpus_gets_the_split_the_plan_shows() -> None:
    [action] = _case("tensor_split_given_puts_a_quarter_on_the_first_gpu").actions
    assert action.spawn is not None
    assert (action.spawn.device, action.spawn.tensor_split, action.spawn.split_mode) == (
        "cuda:0,cuda:1",
        "0.25,0.75",
        "layer",
    )
    # 64 blocks and the output layer (65 layers): llama.cpp's split points put layers 0 … 16
    # on cuda:0 (16/65 < 0.25), the 48 others on cuda:1.
    assert [(s.device, s.layers) for s in action.placement] == [
        ("cpu", 0),
        ("cuda:0", 17),
        ("cuda:1", 48),
    ]


def test_eight_gpus_four_per_worker_run_two_workers_on_four_gpus_each() -> None:
    actions = _case("eight_80gb_gpus_four_per_worker_run_two_workers").actions
    assert [a.spawn.device for a in actions if a.spawn] == [
        "cuda:0,cuda:1,cuda:2,cuda:3",
        "cuda:4,cuda:5,cuda:6,cuda:7",
    ]


def test_a_span_places_layers_on_every_hive_and_waits_for_their_rpc_servers() -> None:
    actions = {a.address: a for a in _case(
        "span_of_three_hives_places_a_70b_model_over_their_gpus"
    ).actions}  # fmt: skip
    worker = actions["worker.gpu1.llama-70b[0]"]
    assert worker.spawn is not None
    assert worker.spawn.rpc == "gpu2@10.0.0.12:7836,gpu3@10.0.0.13:7836"
    assert worker.depends_on == ["rpc_server.gpu2", "rpc_server.gpu3"]
    assert {(s.hive, s.rpc) for s in worker.placement if s.layers} == {
        ("gpu1", False),
        ("gpu2", True),
        ("gpu3", True),
    }
    assert sum(s.layers for s in worker.placement) == 81
    server = actions["rpc_server.gpu2"]
    assert server.rpc_server is not None and server.rpc_server.device == "cuda:0"
    assert server.depends_on == ["worker_binary.gpu2.cuda"]


@pytest.mark.parametrize(
    "name", ["span_in_sync_plans_nothing", "gpus_per_worker_2_in_sync_plans_nothing"]
)
def test_a_split_worker_in_place_is_in_sync(name: str) -> None:
    """What a split worker holds is counted back: its own share never over-commits it."""
    the_plan = _case(name)
    assert not the_plan.has_changes and not the_plan.errors


def test_a_dead_rpc_server_is_started_again_then_its_head_worker_restarts() -> None:
    server, worker = sorted(
        _case("a_dead_rpc_server_is_started_and_its_head_worker_restarted").actions,
        key=lambda a: a.kind,
    )
    assert (server.address, server.op) == ("rpc_server.gpu3", "create")
    assert (worker.op, worker.changes) == ("replace", [])  # no declared change: self-heal runs it
    assert worker.depends_on == ["rpc_server.gpu3"]


def test_a_hive_dropped_from_span_stops_its_server_once_the_worker_restarted() -> None:
    actions = {a.address: a for a in _case(
        "a_hive_dropped_from_span_stops_its_rpc_server_after_the_worker"
    ).actions}  # fmt: skip
    assert actions["rpc_server.gpu3"].op == "delete"
    assert actions["rpc_server.gpu3"].depends_on == ["worker.gpu1.llama-70b[0]"]
    assert actions["worker.gpu1.llama-70b[0]"].op == "replace"


@pytest.mark.parametrize(
    ("name", "address", "words"),
    [
        ("a_model_bigger_than_its_gpus_together_is_an_error", "worker.gpu1.qwen-32b[0]",
         "does not fit its devices"),
        ("a_spanned_gpu_over_committed_by_its_own_worker_is_an_error", "hive.gpu2",
         "llama-70b of hive gpu1 (over RPC), qwen-32b need"),
        ("two_workers_spanning_one_cpu_hive_over_commit_its_memory", "hive.helper",
         "the memory of hive helper is over-committed"),
        ("span_onto_a_hive_without_an_nvidia_gpu_is_an_error", "worker.gpu1.llama-70b[0]",
         "hive gpu3 has no NVIDIA GPU"),
    ],
)  # fmt: skip
def test_what_does_not_fit_is_an_error_before_anything_moves(
    name: str, address: str, words: str
) -> None:
    the_plan = _case(name)
    assert [e.address for e in the_plan.errors] == [address]
    assert words in the_plan.errors[0].message
    assert not any(a.kind in ("worker", "rpc_server") for a in the_plan.actions)
