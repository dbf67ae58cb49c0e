"""What a targeted apply leaves as the desired state: the last one, plus only what its
targets cover whole."""

from __future__ import annotations

from typing import Any

import pytest

from rbee.config.models import Cluster
from rbee.plan.desired import desired_after


def _cluster(replicas: int, *, port: int = 7835, extra_model: bool = False) -> Cluster:
    models: list[dict[str, Any]] = [{"name": "m", "source": "file:///m.gguf"}]
    if extra_model:
        models.append({"name": "n", "source": "file:///n.gguf"})
    return Cluster.model_validate(
        {
            "hives": [
                {"name": "a", "host": "127.0.0.1", "port": port},
                {"name": "b", "host": "10.0.0.2"},
            ],
            "models": models,
            "worker_binaries": [{"name": "cpu"}],
            "deployments": [{"model": "m", "worker": "cpu", "hives": "all", "replicas": replicas}],
        }
    )


def test_without_targets_the_yaml_is_the_desired_state() -> None:
    new = _cluster(3)
    assert desired_after(_cluster(1), new, []) is new


@pytest.mark.parametrize(
    "targets",
    [["model.a.m"], ["worker.a.m[1]"], ["worker.a.m"], ["hive.a"], ["worker_binary.b.cpu"]],
)
def test_a_target_that_does_not_cover_a_deployment_leaves_it_as_it_was(targets: list[str]) -> None:
    after = desired_after(_cluster(1), _cluster(3), targets)
    assert [d.replicas for d in after.deployments] == [1]


@pytest.mark.parametrize(
    "targets", [["worker"], ["worker.a", "worker.b"], ["worker.a.m", "worker.b.m"]]
)
def test_targets_covering_a_deployment_on_every_hive_take_it(targets: list[str]) -> None:
    after = desired_after(_cluster(1), _cluster(3), targets)
    assert [(d.replicas, d.hives) for d in after.deployments] == [(3, ["a", "b"])]


def test_a_targeted_hive_takes_its_new_settings_and_the_others_stay() -> None:
    after = desired_after(_cluster(1), _cluster(1, port=9000), ["hive.a"])
    assert [(h.name, h.port) for h in after.hives] == [("a", 9000), ("b", 7835)]
    assert desired_after(_cluster(1), _cluster(1, port=9000), ["hive.b"]).hives[0].port == 7835


def test_a_new_model_comes_in_only_when_targeted() -> None:
    assert [
        m.name for m in desired_after(_cluster(1), _cluster(1, extra_model=True), ["hive.a"]).models
    ] == ["m"]
    after = desired_after(_cluster(1), _cluster(1, extra_model=True), ["model.b.n"])
    assert [m.name for m in after.models] == ["m", "n"]


def test_a_first_apply_that_is_targeted_keeps_only_what_it_covers() -> None:
    after = desired_after(None, _cluster(2, extra_model=True), ["model.a.n"])
    assert (after.hives, after.deployments, [m.name for m in after.models]) == ([], [], ["n"])
    whole = desired_after(None, _cluster(2), ["worker"])
    assert [h.name for h in whole.hives] == ["a", "b"]
    assert [m.name for m in whole.models] == ["m"] and [b.name for b in whole.worker_binaries] == [
        "cpu"
    ]
    assert [d.replicas for d in whole.deployments] == [2]
