"""The planner: a pure function from (desired, observed) to an ordered list of actions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from rbee.config.models import Cluster, Deployment, Hive, Model
from rbee.plan.observed import HiveFacts, Observed
from rbee.plan.resources import (
    hive_address,
    model_address,
    parse_worker_id,
    worker_address,
    worker_id,
)
from rbee.wire import ModelEntry, SpawnWorker, WorkerProcess

__all__ = ["PLAN_FORMAT_VERSION", "Action", "Plan", "plan"]

PLAN_FORMAT_VERSION = 1

Op = Literal["create", "update", "replace", "delete"]


class Action(BaseModel):
    """One change to one resource, with why and what it waits for."""

    address: str
    kind: Literal["hive", "model", "worker"]
    op: Op
    hive: str
    reason: str
    depends_on: list[str] = []
    hive_url: str | None = None
    model: str | None = None
    source: str | None = None
    sha256: str | None = None
    pid: int | None = None
    spawn: SpawnWorker | None = None


class Plan(BaseModel):
    """An ordered list of actions: a value that can be printed, saved and applied."""

    format_version: int = PLAN_FORMAT_VERSION
    actions: list[Action] = []

    @property
    def has_changes(self) -> bool:
        return bool(self.actions)

    def counts(self) -> dict[str, int]:
        """How many resources are added, changed and destroyed (a replace counts as a change)."""
        ops = [a.op for a in self.actions]
        return {
            "add": ops.count("create"),
            "change": ops.count("update") + ops.count("replace"),
            "destroy": ops.count("delete"),
        }


def plan(desired: Cluster, observed: Observed, queen_url: str = "") -> Plan:
    """Diff the declared cluster against what was observed. Pure: no I/O."""
    actions: list[Action] = []
    for hive in desired.hives:
        facts = observed.hives.get(hive.name) or HiveFacts(name=hive.name, running=False)
        actions.extend(_plan_hive(desired, hive, facts, queen_url))
    return Plan(actions=actions)


def _plan_hive(desired: Cluster, hive: Hive, facts: HiveFacts, queen_url: str) -> list[Action]:
    actions: list[Action] = []
    hive_deps: list[str] = []
    if not facts.running:
        reason = "not running" if facts.error is None else f"not running ({facts.error})"
        actions.append(
            Action(
                address=hive_address(hive.name),
                kind="hive",
                op="create",
                hive=hive.name,
                reason=f"start {hive.effective_mode} hive: {reason}",
                hive_url=hive.url,
            )
        )
        hive_deps = [hive_address(hive.name)]

    models = {m.name: m for m in desired.models}
    have_models = {m.name: m for m in facts.models}
    deployments = [d for d in desired.deployments if hive.name in desired.hive_names(d)]
    deployed_models = {d.model for d in deployments}
    later: list[Action] = []
    for deployment in deployments:
        model = models[deployment.model]
        model_action = _plan_model(hive, model, have_models.get(model.name), hive_deps)
        deps = list(hive_deps)
        if model_action is not None:
            actions.append(model_action)
            deps.append(model_action.address)
        procs = [w for w in facts.workers if w.model == deployment.model]
        later.extend(
            _plan_workers(
                hive,
                deployment,
                model,
                procs,
                deps,
                queen_url,
                model_changed=model_action is not None and model_action.op == "replace",
            )
        )
    for proc in facts.workers:
        if proc.model not in deployed_models:
            later.append(_delete_worker(hive, proc, "not declared for this hive"))
    # Deletes first (frees slots and memory), then creates and replaces.
    actions.extend(a for a in later if a.op == "delete")
    actions.extend(a for a in later if a.op != "delete")
    return actions


def _plan_model(
    hive: Hive, model: Model, have: ModelEntry | None, deps: list[str]
) -> Action | None:
    common = {
        "address": model_address(hive.name, model.name),
        "kind": "model",
        "hive": hive.name,
        "depends_on": deps,
        "hive_url": hive.url,
        "model": model.name,
        "source": model.source,
        "sha256": model.sha256,
    }
    if have is None:
        return Action(op="create", reason=f"add from {model.source}", **common)  # type: ignore[arg-type]
    if model.sha256 is not None and have.sha256 != model.sha256:
        reason = f"sha256 changed {have.sha256[:12]}… → {model.sha256[:12]}…"
        return Action(op="replace", reason=reason, **common)  # type: ignore[arg-type]
    return None


def _plan_workers(
    hive: Hive,
    deployment: Deployment,
    model: Model,
    procs: list[WorkerProcess],
    deps: list[str],
    queen_url: str,
    *,
    model_changed: bool,
) -> list[Action]:
    actions: list[Action] = []
    by_index: dict[int, list[WorkerProcess]] = {}
    for proc in procs:
        index = parse_worker_id(hive.name, deployment.model, proc.worker_id)
        if index is None or index >= deployment.replicas:
            why = (
                f"replicas → {deployment.replicas}"
                if index is not None
                else f"unknown worker id {proc.worker_id!r}"
            )
            actions.append(_delete_worker(hive, proc, why))
        else:
            by_index.setdefault(index, []).append(proc)
    for index in range(deployment.replicas):
        spawn = SpawnWorker(
            worker_id=worker_id(hive.name, deployment.model, index),
            hive=hive.name,
            model=deployment.model,
            worker_binary=deployment.worker,
            slots=deployment.slots,
            ctx_size=deployment.ctx_size,
            device=deployment.device,
            chat_format=model.chat_format,
            queen_url=queen_url,
        )
        address = worker_address(hive.name, deployment.model, index)
        existing = sorted(by_index.get(index, []), key=lambda p: p.started_at)
        for duplicate in existing[1:]:
            actions.append(
                _delete_worker(hive, duplicate, "duplicate of the same replica", by_pid=True)
            )
        if not existing:
            reason = (
                f"spawn (slots {deployment.slots}, ctx_size {deployment.ctx_size}, "
                f"{deployment.device})"
            )
            actions.append(_worker_action(address, "create", hive, reason, deps, spawn, None))
            continue
        changes = _spec_changes(existing[0], deployment)
        if model_changed:
            changes.append("model file changed")
        if changes:
            reason = ", ".join(changes) + ": worker restarts"
            actions.append(
                _worker_action(address, "replace", hive, reason, deps, spawn, existing[0].pid)
            )
    return actions


def _spec_changes(proc: WorkerProcess, deployment: Deployment) -> list[str]:
    pairs = [
        ("slots", proc.slots, deployment.slots),
        ("ctx_size", proc.ctx_size, deployment.ctx_size),
        ("device", proc.device, deployment.device),
        ("worker_binary", proc.worker_binary, deployment.worker),
    ]
    return [f"{name} {old} → {new}" for name, old, new in pairs if old != new]


def _worker_action(
    address: str,
    op: Op,
    hive: Hive,
    reason: str,
    deps: list[str],
    spawn: SpawnWorker,
    pid: int | None,
) -> Action:
    return Action(
        address=address,
        kind="worker",
        op=op,
        hive=hive.name,
        reason=reason,
        depends_on=deps,
        hive_url=hive.url,
        model=spawn.model,
        pid=pid,
        spawn=spawn,
    )


def _delete_worker(hive: Hive, proc: WorkerProcess, reason: str, by_pid: bool = False) -> Action:
    index = None if by_pid else parse_worker_id(hive.name, proc.model, proc.worker_id)
    address = (
        worker_address(hive.name, proc.model, index)
        if index is not None
        else f"worker.{hive.name}.{proc.model}[pid {proc.pid}]"
    )
    return Action(
        address=address,
        kind="worker",
        op="delete",
        hive=hive.name,
        reason=f"stop: {reason}",
        hive_url=hive.url,
        model=proc.model,
        pid=proc.pid,
    )
