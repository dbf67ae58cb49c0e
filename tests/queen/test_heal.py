"""Which actions self-heal may run on its own: over every planner scenario, only healing ones,
and never one that waits for an action it leaves to `rbee apply`."""

from __future__ import annotations

import pytest

from rbee.queen.control.heal import healing, heals
from rbee.wire.plan import Action
from tests.plan.test_planner import NAMES, _case


@pytest.mark.parametrize("name", NAMES)
def test_self_heal_never_deletes_installs_upgrades_or_changes_a_spec(name: str) -> None:
    actions = _case(name).actions
    kept, left = healing(actions)
    assert kept + left == [a for a in actions if a in kept] + [a for a in actions if a in left]
    assert sorted(a.address for a in kept + left) == sorted(a.address for a in actions)
    for action in kept:
        assert action.op != "delete", action.address
        assert not action.install, action.address
        if action.op == "replace":
            fields = {c.field for c in action.changes}
            assert fields <= {"file"}, (action.address, fields)
            assert action.kind in ("model", "worker"), action.address
    # Nothing kept waits for something left out: the executor would not wait for it.
    left_out = {a.address for a in left}
    for action in kept:
        assert not left_out.intersection(action.depends_on), action.address


def _by_address(actions: list[Action]) -> list[str]:
    return [a.address for a in actions]


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("dead_worker_respawned", ["worker.local.gemma3-270m[0]"]),
        ("hung_worker_replaced", ["worker.local.gemma3-270m[1]"]),
        (
            "model_file_changed_on_disk_fetched_again",
            ["model.local.gemma3-270m", "worker.local.gemma3-270m[0]"],
        ),
        ("model_file_deleted_fetched_again_workers_serve_on", ["model.local.gemma3-270m"]),
        # Spec changes and scale-downs come from the YAML: only `rbee apply` makes them.
        ("ctx_size_change_restarts_worker", []),
        ("chat_format_change_restarts_worker", []),
        ("duplicate_replica_stopped", []),
    ],
)
def test_what_self_heal_takes_from_a_plan(name: str, kept: list[str]) -> None:
    assert _by_address(healing(_case(name).actions)[0]) == kept


def test_a_spawn_that_waits_for_an_upgrade_is_left_to_apply() -> None:
    upgrade = Action(
        address="hive.h1", kind="hive", op="replace", hive="h1", reason="upgrade", install=True
    )
    spawn = Action(
        address="worker.h1.m[0]",
        kind="worker",
        op="create",
        hive="h1",
        reason="spawn",
        depends_on=["hive.h1"],
    )
    start = Action(address="hive.h2", kind="hive", op="create", hive="h2", reason="not running")
    assert heals(spawn) and heals(start) and not heals(upgrade)
    kept, left = healing([upgrade, spawn, start])
    assert _by_address(kept) == ["hive.h2"]
    assert _by_address(left) == ["hive.h1", "worker.h1.m[0]"]
