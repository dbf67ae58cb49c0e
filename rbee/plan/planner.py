"""The planner: a pure function from (desired, observed) to an ordered list of actions."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from deepdiff import DeepDiff

import rbee
from rbee.config.models import Cluster, Deployment, Hive, Model, WorkerBinary
from rbee.defaults import split_gguf
from rbee.net import LOCAL_HOSTS, hide_url_secrets
from rbee.plan.digest import observed_digest, redacted
from rbee.plan.observed import HiveFacts, Observed, SourceFacts
from rbee.plan.placement import Placement, Replica, place
from rbee.plan.resources import (
    covers,
    deployment_address,
    hive_address,
    model_address,
    parse_worker_id,
    rpc_server_address,
    worker_address,
    worker_binary_address,
    worker_id,
)
from rbee.wire import (
    AddWorkerBinary,
    ModelEntry,
    Purpose,
    RpcServerProcess,
    SpawnRpcServer,
    SpawnWorker,
    WorkerBinaryEntry,
    WorkerProcess,
)
from rbee.wire.plan import Action, Change, Note, Op, Plan

__all__ = ["plan", "scale_up_action"]


def plan(
    desired: Cluster,
    observed: Observed,
    queen_url: str = "",
    *,
    targets: list[str] | None = None,
    refresh_only: bool = False,
    prune: bool | None = None,
    rbee_version: str = rbee.__version__,
) -> Plan:
    """Diff the declared cluster against what was observed. Pure: no I/O."""
    ctx = _Context(desired, observed, queen_url, rbee_version)
    actions: list[Action] = []
    ctx.plan_rpc_servers()
    for hive in desired.hives:
        facts = observed.hives.get(hive.name) or HiveFacts(
            name=hive.name, running=False, url=hive.url, mode=hive.effective_mode
        )
        actions.extend(ctx.plan_hive(hive, facts))
    declared = {h.name for h in desired.hives}
    pruning = desired.prune if prune is None else prune
    for name, facts in sorted(observed.hives.items()):
        if name not in declared:
            actions.extend(ctx.plan_unlisted_hive(facts, pruning))
    actions = _rpc_server_stops_after_their_workers(actions, observed)
    if not pruning:
        ctx.unmanaged.extend(ctx.unlisted)
    else:
        actions.extend(ctx.prunable)
    if desired.peer_fetch:
        actions = _share_transfers(actions, desired, observed)
        actions = _share_builds(actions, desired, observed)
    if targets:
        actions = _targeted(actions, targets)
    the_plan = Plan(
        rbee_version=rbee_version,
        created_at=observed.at,
        refresh_only=refresh_only,
        targets=list(targets or []),
        observed_digest=observed_digest(observed),
        cluster=redacted(desired),
        actions=actions,
        unmanaged=ctx.unmanaged,
        errors=ctx.errors,
        scaling=ctx.scaling,
    )
    if refresh_only:
        drift = [Note(address=a.address, message=a.reason) for a in actions]
        the_plan = the_plan.model_copy(update={"actions": [], "drift": drift})
    return the_plan


class _Context:
    """What one planning pass needs at hand, and the notes it collects on the way."""

    def __init__(
        self, desired: Cluster, observed: Observed, queen_url: str, rbee_version: str
    ) -> None:
        self.desired = desired
        self.observed = observed
        self.queen_url = queen_url
        self.rbee_version = rbee_version
        self.models = {m.name: m for m in desired.models}
        self.binaries = {b.name: b for b in desired.worker_binaries}
        self.heartbeats = {(w.worker_id, w.pid) for w in observed.registry}
        self.unmanaged: list[Note] = []
        self.errors: list[Note] = []
        self.unlisted: list[Note] = []
        self.prunable: list[Action] = []
        self.scaling: list[Note] = []
        self.placement: Placement = place(desired, observed.hives)
        self.rpc_servers: dict[str, Action] = {}

    def plan_rpc_servers(self) -> None:
        """Each hive's RPC server: started where a worker spans the hive, replaced when its
        spec, runtime or hive changes, stopped where none spans it any more. Planned before
        the hives, since the workers that span a hive wait for (and restart with) its server."""
        for hive in self.desired.hives:
            facts = self.observed.hives.get(hive.name)
            if facts is None or (facts.ssh is not None and not facts.ssh.reachable):
                continue
            action = self._rpc_server_action(
                hive, facts, self.placement.servers.get(hive.name), facts.rpc_servers
            )
            if action is not None:
                self.rpc_servers[hive.name] = action

    def _rpc_server_action(
        self,
        hive: Hive,
        facts: HiveFacts,
        wanted: SpawnRpcServer | None,
        running: list[RpcServerProcess],
    ) -> Action | None:
        common: dict[str, Any] = {
            "address": rpc_server_address(hive.name),
            "kind": "rpc_server",
            "hive": hive.name,
            "hive_url": hive.url,
        }
        current = running[0] if running else None
        if wanted is None:
            if current is None:
                return None
            return Action(op="delete", reason="stop: no worker spans this hive", pid=current.pid,
                          rpc_server=_rpc_spec(current), **common)  # fmt: skip
        spanning = ", ".join(
            worker_address(h, key, 0)
            for (h, key), servers in self.placement.spans.items()
            if hive.name in servers and not self.placement.blocked(h, key)
        )
        lends = f"lend {wanted.device} on port {wanted.port} to {spanning}"
        if current is None:
            return Action(op="create", reason=lends, rpc_server=wanted, **common)
        changes = _changes(_rpc_spec(current).model_dump(), wanted.model_dump())
        causes = [f"{c.field} {c.old} → {c.new}" for c in changes]
        hive_action = self._hive_action(hive, facts)
        if hive_action is not None and hive_action.op == "replace":
            causes.append("hive upgraded")
        binary = self.binaries.get(wanted.worker_binary)
        have = {b.name: b for b in facts.worker_binaries}.get(wanted.worker_binary)
        if binary is not None and have is not None:
            binary_action = self._binary_action(hive, binary, have, [])
            if binary_action is not None and binary_action.op == "replace":
                causes.append("worker binary changed")
        if not causes:
            return None
        return Action(
            op="replace",
            reason=", ".join(causes) + f": server restarts ({lends})",
            changes=changes,
            pid=current.pid,
            rpc_server=wanted,
            **common,
        )

    def plan_hive(self, hive: Hive, facts: HiveFacts) -> list[Action]:
        if facts.ssh is not None and not facts.ssh.reachable:
            self.errors.append(
                Note(address=hive_address(hive.name), message=facts.ssh.error or "unreachable")
            )
            return []
        actions: list[Action] = []
        hive_action = self._hive_action(hive, facts)
        hive_deps: list[str] = []
        if hive_action is not None:
            actions.append(hive_action)
            hive_deps = [hive_action.address]
        restart_all = hive_action is not None and hive_action.op == "replace"

        have_models = {m.name: m for m in facts.models}
        deployments = [
            d for d in self.desired.deployments if hive.name in self.desired.hive_names(d)
        ]
        deployed = {d.model for d in deployments}
        declared = list(deployments)
        # A deployment the hive cannot serve is reported and left as it is; the rest proceed.
        placement = self.placement
        self.errors.extend(note for name, note in placement.errors if name == hive.name)
        deployments = [d for d in deployments if not placement.blocked(hive.name, d.key)]
        for deployment in list(deployments):
            problem = self.source_problem(self.models[deployment.model])
            if problem is not None:
                address = model_address(hive.name, deployment.model)
                self.errors.append(Note(address=address, message=problem))
                deployments.remove(deployment)
        used_binaries = {d.worker for d in deployments}
        server = placement.servers.get(hive.name)
        if server is not None:  # the RPC server runs the spanning worker's binary
            used_binaries.add(server.worker_binary)
        have_binaries = {b.name: b for b in facts.worker_binaries}
        binary_actions: dict[str, Action] = {}
        for name in sorted(used_binaries):
            binary_action = self._binary_action(
                hive, self.binaries[name], have_binaries.get(name), hive_deps
            )
            if binary_action is not None:
                actions.append(binary_action)
                binary_actions[name] = binary_action
        later: list[Action] = []
        rpc_action = self.rpc_servers.get(hive.name)
        if rpc_action is not None:
            deps = list(hive_deps)
            if server is not None and server.worker_binary in binary_actions:
                deps.append(binary_actions[server.worker_binary].address)
            later.append(rpc_action.model_copy(update={"depends_on": deps}))
        model_actions: dict[str, Action | None] = {}
        for deployment in deployments:
            model = self.models[deployment.model]
            if model.name in model_actions:  # two deployments of one model share its file
                model_action = model_actions[model.name]
            else:
                model_action = self._model_action(
                    hive, model, have_models.get(model.name), hive_deps
                )
                model_actions[model.name] = model_action
                if model_action is not None:
                    actions.append(model_action)
            deps = list(hive_deps)
            binary_action = binary_actions.get(deployment.worker)
            if binary_action is not None:
                deps.append(binary_action.address)
            if model_action is not None:
                deps.append(model_action.address)
            waiting = placement.waiting.get((hive.name, deployment.key))
            if waiting is not None:
                address = worker_address(hive.name, deployment.key, 0)
                self.errors.append(Note(address=address, message=waiting))
                continue
            servers = [self.rpc_servers[h] for h in deployment.span if h in self.rpc_servers]
            restarts = [
                f"the RPC server of hive {a.hive} restarts"
                for a in servers
                if a.op in ("create", "replace")
            ]
            deps += [a.address for a in servers if a.op != "delete"]
            later.extend(
                self._worker_actions(
                    hive,
                    deployment,
                    model,
                    placement.replicas[(hive.name, deployment.key)],
                    [w for w in facts.workers if _belongs(w, hive.name, deployment)],
                    deps,
                    # Known only from the file's header, so only for a file the hive holds.
                    purpose=_purpose(have_models.get(model.name)) if model_action is None else None,
                    restart=(
                        "hive upgraded"
                        if restart_all
                        else "model file changed"
                        if model_action is not None
                        and model_action.op == "replace"
                        # A worker maps its file: one deleted under it serves on unharmed.
                        and not (have_models[model.name].damaged or "").endswith("is missing")
                        else "worker binary changed"
                        if binary_action is not None and binary_action.op == "replace"
                        else ", ".join(restarts) or None
                    ),
                )
            )
        for proc in facts.workers:
            if any(_belongs(proc, hive.name, d) for d in declared):
                continue
            why = (
                f"unknown worker id {proc.worker_id!r}"
                if proc.model in deployed
                else "not declared for this hive"
            )
            later.append(_delete_worker(hive.name, hive.url, proc, why))
        stopping = [a for a in later if a.op == "delete"]
        for entry in facts.models:
            if entry.name not in deployed:
                stops = [a.address for a in stopping if a.model == entry.name]
                delete = Action(
                    address=model_address(hive.name, entry.name),
                    kind="model",
                    op="delete",
                    hive=hive.name,
                    reason="",
                    depends_on=stops,
                    hive_url=hive.url,
                    model=entry.name,
                )
                self._unlisted(delete, "not declared for this hive")
        declared_binaries = {d.worker for d in declared}
        if server is not None:
            declared_binaries.add(server.worker_binary)
        for binary in facts.worker_binaries:
            if binary.name not in declared_binaries:
                users = {w.pid for w in facts.workers if w.worker_binary == binary.name}
                delete = Action(
                    address=worker_binary_address(hive.name, binary.name),
                    kind="worker_binary",
                    op="delete",
                    hive=hive.name,
                    reason="",
                    depends_on=[a.address for a in stopping if a.pid in users],
                    hive_url=hive.url,
                    binary=AddWorkerBinary(name=binary.name, backend=binary.backend),
                )
                self._unlisted(delete, "not used on this hive")
        # Deletes first (frees slots and memory), then creates and replaces.
        actions.extend(a for a in later if a.op == "delete")
        actions.extend(a for a in later if a.op != "delete")
        return actions

    def plan_unlisted_hive(self, facts: HiveFacts, pruning: bool) -> list[Action]:
        address = hive_address(facts.name)
        if not pruning:
            self.unmanaged.append(
                Note(address=address, message="not in the configuration; kept (prune is off)")
            )
            return []
        url = facts.url or ""
        stops = [_delete_worker(facts.name, url, p, "its hive is removed") for p in facts.workers]
        if not facts.running and not (facts.ssh and facts.ssh.rbee_version):
            return stops
        hive_delete = Action(
            address=address,
            kind="hive",
            op="delete",
            hive=facts.name,
            reason="not in the configuration (prune)",
            depends_on=[a.address for a in stops],
            hive_url=url,
            hive_mode=facts.mode,
        )
        return [*stops, hive_delete]

    def _hive_action(self, hive: Hive, facts: HiveFacts) -> Action | None:
        common: dict[str, Any] = {
            "address": hive_address(hive.name),
            "kind": "hive",
            "hive": hive.name,
            "hive_url": hive.url,
            "hive_mode": hive.effective_mode,
        }
        ssh = facts.ssh
        if ssh is not None:
            installed = ssh.rbee_version
            if installed is None:
                reason = f"install rbee {self.rbee_version} and start the hive"
                return Action(op="create", reason=reason, install=True, **common)
            if installed != self.rbee_version:
                change = Change(field="rbee_version", old=installed, new=self.rbee_version)
                reason = f"upgrade rbee {installed} → {self.rbee_version}: hive and workers restart"
                return Action(op="replace", reason=reason, install=True, changes=[change], **common)
        if facts.running:
            return None
        mode = hive.effective_mode
        reason = "not running" if facts.error is None else f"not running ({facts.error})"
        return Action(op="create", reason=f"start {mode} hive: {reason}", **common)

    def _binary_action(
        self, hive: Hive, binary: WorkerBinary, have: WorkerBinaryEntry | None, deps: list[str]
    ) -> Action | None:
        spec = binary.model_dump(mode="json")
        build = binary.build
        request = AddWorkerBinary(
            name=binary.name,
            backend=binary.backend,
            path=binary.path,
            build=build is not None,
            url=binary.url,
            sha256=binary.sha256,
            llama_cpp_python=build.llama_cpp_python if build else None,
            cmake_args=build.cmake_args if build else None,
            spec=spec,
        )
        common: dict[str, Any] = {
            "address": worker_binary_address(hive.name, binary.name),
            "kind": "worker_binary",
            "hive": hive.name,
            "depends_on": deps,
            "hive_url": hive.url,
            "binary": request,
        }
        if have is None:
            how = (
                f"use {binary.path}"
                if binary.path
                else "build"
                if build
                else f"install {binary.url}"
                if binary.url
                else "provision"
            )
            return Action(op="create", reason=f"{how} ({binary.backend})", **common)
        if _declared(have.spec) != _declared(spec):
            changes = _changes(_declared(have.spec), _declared(spec))
            reason = ", ".join(f"{c.field} {c.old} → {c.new}" for c in changes)
            return Action(op="replace", reason=f"{reason}: re-provision", changes=changes, **common)
        return None

    def _unlisted(self, delete: Action, why: str) -> None:
        """A resource the YAML no longer lists: kept and noted, or deleted with prune."""
        self.unlisted.append(Note(address=delete.address, message=f"{why}; kept (prune is off)"))
        self.prunable.append(delete.model_copy(update={"reason": f"{why} (prune)"}))

    def _model_action(
        self, hive: Hive, model: Model, have: ModelEntry | None, deps: list[str]
    ) -> Action | None:
        resolved = self.observed.sources.get(model.source)
        hub_sha = resolved.sha256 if resolved else None
        # What the hive is to fetch: the YAML's sha256, else the one the Hub publishes.
        expected = model.sha256 or hub_sha
        common: dict[str, Any] = {
            "address": model_address(hive.name, model.name),
            "kind": "model",
            "hive": hive.name,
            "depends_on": deps,
            "hive_url": hive.url,
            "model": model.name,
            "source": model.source,
            "sha256": expected,
            "revision": resolved.revision if resolved else None,
        }
        if have is None:
            return Action(op="create", reason=_adding(model, resolved), **common)
        if have.damaged is not None:
            change = Change(field="file", old="damaged", new="intact")
            return Action(
                op="replace", reason=f"{have.damaged}: fetch again", changes=[change], **common
            )
        if expected is not None and have.sha256 != expected:
            change = Change(field="sha256", old=have.sha256, new=expected)
            why = (
                "sha256 changed"
                if model.sha256
                else f"{hide_url_secrets(model.source)} changed on the Hub:"
            )
            reason = f"{why} {have.sha256[:12]}… → {expected[:12]}…"
            return Action(op="replace", reason=reason, changes=[change], **common)
        return None

    def source_problem(self, model: Model) -> str | None:
        """Why the model's source cannot be fetched, as resolved while planning (None: fine,
        or not known until a hive tries)."""
        resolved = self.observed.sources.get(model.source)
        if resolved is None:
            return None
        if resolved.error is not None:
            return None if resolved.transient else resolved.error
        if model.sha256 and resolved.sha256 and model.sha256 != resolved.sha256:
            return (
                f"the sha256 in the YAML ({model.sha256}) differs from the Hub's "
                f"({resolved.sha256}) for {hide_url_secrets(model.source)}"
            )
        return None

    def _worker_actions(
        self,
        hive: Hive,
        deployment: Deployment,
        model: Model,
        devices: list[Replica],
        procs: list[WorkerProcess],
        deps: list[str],
        restart: str | None,
        purpose: Purpose | None = None,
    ) -> list[Action]:
        actions: list[Action] = []
        by_index: dict[int, list[WorkerProcess]] = {}
        for proc in procs:
            index = parse_worker_id(hive.name, deployment.key, proc.worker_id)
            assert index is not None  # procs are this deployment's (`_belongs`)
            by_index.setdefault(index, []).append(proc)
        wanted, cut, scaling = self._replicas(hive, deployment, devices, sorted(by_index))
        for index in cut:
            why = f"above max ({scaling})" if scaling else f"replicas → {len(devices)}"
            for proc in by_index.pop(index):
                actions.append(_delete_worker(hive.name, hive.url, proc, why, deployment.key))
        previous_replace: str | None = None
        for index, replica in wanted:
            spawn = _worker_spawn(hive.name, deployment, model, index, replica, self.queen_url)
            address = worker_address(hive.name, deployment.key, index)
            existing = sorted(by_index.get(index, []), key=lambda p: p.started_at)
            for duplicate in existing[1:]:
                actions.append(
                    _delete_worker(
                        hive.name, hive.url, duplicate, "duplicate of the same replica", None
                    )
                )
            if not existing:
                reason = _spawning(spawn, purpose) + (f": below min ({scaling})" if scaling else "")
                create = _worker_action(address, "create", hive, reason, deps, spawn, replica)
                actions.append(create)
                continue
            current = existing[0]
            changes = _spec_changes(current, spawn)
            causes = [f"{c.field} {c.old} → {c.new}" for c in changes]
            if restart is not None:
                causes.append(restart)
            elif self.observed.silenced.get(current.worker_id) == current.pid:
                causes.append("alive but its heartbeats stopped (hung)")
            elif self._silent(current):
                causes.append("alive but silent: no heartbeat reached the queen")
            if not causes:
                continue
            # Rolling: one replica of a deployment is replaced at a time, so the others serve.
            rolling = [previous_replace] if previous_replace else []
            action = _worker_action(
                address,
                "replace",
                hive,
                ", ".join(causes) + ": worker restarts",
                deps + rolling,
                spawn,
                replica,
                pid=current.pid,
                changes=changes,
            )
            actions.append(action)
            previous_replace = action.address
        return actions

    def _replicas(
        self, hive: Hive, deployment: Deployment, devices: list[Replica], running: list[int]
    ) -> tuple[list[tuple[int, Replica]], list[int], str | None]:
        """The replicas to keep or spawn (index, device), the indices to stop, and for a range
        what it is and how many run (`replicas 0..3, 2 live`).

        A fixed count wants replicas 0 … N-1. A range keeps what runs while it is within
        `min`..`max` (the queen scales it between applies), spawns the lowest free indices up
        to `min` and stops the highest down to `max`; the plan notes it either way.
        """
        elastic = deployment.elastic
        if elastic is None:
            return list(enumerate(devices)), [i for i in running if i >= len(devices)], None
        live = len(running)
        address = deployment_address(hive.name, deployment.key)
        self.scaling.append(Note(address=address, message=f"replicas {elastic} ({live} live)"))
        kept = running[: elastic.max]
        free = (index for index in itertools.count() if index not in running)
        added = [next(free) for _ in range(elastic.min - len(kept))]
        wanted = [(index, Replica(device=deployment.device)) for index in sorted(kept + added)]
        return wanted, running[elastic.max :], f"replicas {elastic}, {live} live"

    def _silent(self, proc: WorkerProcess) -> bool:
        """Never heard, though it had the time: started long ago, and this queen has listened
        for its heartbeats for a whole TTL (a restarted queen has not, at first)."""
        at = self.observed.at
        if (proc.worker_id, proc.pid) in self.heartbeats or not at:
            return False
        grace = self.desired.self_heal.silent_after
        return at - proc.started_at > grace and at >= self.observed.heard_from


def _share_transfers(actions: list[Action], desired: Cluster, observed: Observed) -> list[Action]:
    """A model several hives fetch from the Hub or a URL travels once: the first hive fetches
    it from the source, the others copy it from that hive (and from hives that already hold
    it) over the LAN, sha256-checked, falling back to the source."""
    groups: dict[tuple[str, str], list[Action]] = {}
    for action in actions:
        if (
            action.kind == "model"
            and action.op in ("create", "replace")
            and action.model is not None
            and action.sha256 is not None
            and (action.source or "").startswith(("hf://", "https://", "http://"))
            # A peer serves a model as one file: a split GGUF comes from its source.
            and split_gguf(action.source or "") is None
        ):
            groups.setdefault((action.model, action.sha256), []).append(action)
    updated: dict[str, Action] = {}
    for (model, sha256), fetching in groups.items():
        # Peers serve a model by its name: a hive holds it when it lists it with this sha256.
        holders = _holders(desired, observed, partial(_holds_model, model, sha256))
        for action, peers, deps, via in _peering(fetching, holders, desired):
            reason = f"{action.reason}, copied from {via} over the LAN"
            updated[action.address] = action.model_copy(
                update={"peers": peers, "depends_on": deps, "reason": reason}
            )
    return [updated.get(action.address, action) for action in actions]


def _share_builds(actions: list[Action], desired: Cluster, observed: Observed) -> list[Action]:
    """A runtime is compiled once per platform: the first hive of a platform builds it, the
    others of that platform take its wheel (a hive checks that the platform really matches,
    and compiles itself when it does not)."""
    groups: dict[tuple[str, tuple[str, str, str]], list[Action]] = {}
    for action in actions:
        where = _platform(observed.hives.get(action.hive))
        if (
            action.kind == "worker_binary"
            and action.op in ("create", "replace")
            and action.binary is not None
            and action.binary.build
            and where is not None
        ):
            groups.setdefault((action.binary.name, where), []).append(action)
    updated: dict[str, Action] = {}
    for (name, where), building in groups.items():
        spec = _declared(building[0].binary.spec if building[0].binary else {})
        holders = _holders(desired, observed, partial(_holds_runtime, name, where, spec))
        for action, peers, deps, via in _peering(building, holders, desired):
            assert action.binary is not None
            binary = action.binary.model_copy(update={"peers": peers})
            reason = f"{action.reason}, its wheel taken from {via}"
            updated[action.address] = action.model_copy(
                update={"binary": binary, "depends_on": deps, "reason": reason}
            )
    return [updated.get(action.address, action) for action in actions]


def _holds_model(model: str, sha256: str, facts: HiveFacts) -> bool:
    return any(e.name == model and e.sha256 == sha256 for e in facts.models)


def _holds_runtime(
    name: str, where: tuple[str, str, str], spec: dict[str, Any], facts: HiveFacts
) -> bool:
    return _platform(facts) == where and any(
        b.name == name and _declared(b.spec) == spec for b in facts.worker_binaries
    )


def _holders(desired: Cluster, observed: Observed, holds: Callable[[HiveFacts], bool]) -> list[str]:
    """The URLs of running declared hives that already have what `holds` looks for."""
    urls = {hive.name: hive.url for hive in desired.hives}
    return [
        urls[name]
        for name, facts in sorted(observed.hives.items())
        if name in urls and facts.running and holds(facts)
    ]


def _peering(
    group: list[Action], holders: list[str], desired: Cluster
) -> Iterator[tuple[Action, list[str], list[str], str]]:
    """For each action of a group that can be served by a peer: the action, its peers (the
    holders, else the group's first hive, which it then waits for), its dependencies and the
    peers' names. A hive on loopback can only serve hives on its own machine."""
    names = {hive.url: hive.name for hive in desired.hives}
    seed = next((a for a in group if not _loopback(a.hive_url)), group[0])
    for action in group:
        peers = [url for url in holders if _reaches(action.hive_url, url)]
        deps = list(action.depends_on)
        if not holders and action is not seed and _reaches(action.hive_url, seed.hive_url):
            peers.append(seed.hive_url or "")
            deps.append(seed.address)
        if peers:
            yield action, peers, deps, ", ".join(names[url] for url in peers)


def _platform(facts: HiveFacts | None) -> tuple[str, str, str] | None:
    """(os, arch, python major.minor) of a hive, from its capabilities or its SSH probe."""
    if facts is None:
        return None
    caps = facts.capabilities
    if caps is not None and caps.python:
        return (caps.os.lower(), caps.arch, caps.python)
    ssh = facts.ssh
    if ssh is not None and ssh.os and ssh.arch and ssh.python_version:
        python = ".".join(ssh.python_version.split(".")[:2])
        return (ssh.os.split()[0].lower(), ssh.arch, python)
    return None


def _declared(spec: dict[str, Any]) -> dict[str, Any]:
    """A worker binary's spec without its unset fields: a field a newer rbee adds to the YAML
    (unset) is no change to a binary provisioned by an older one."""
    return {
        key: _declared(value) if isinstance(value, dict) else value
        for key, value in spec.items()
        if value is not None
    }


def _loopback(url: str | None) -> bool:
    return (urlsplit(url or "").hostname or "") in LOCAL_HOSTS


def _reaches(client: str | None, server: str | None) -> bool:
    """Whether the hive at `client` can reach the hive at `server` by its declared URL."""
    return server is not None and server != client and (_loopback(client) or not _loopback(server))


def _adding(model: Model, resolved: SourceFacts | None) -> str:
    """`add from hf://… (sha256 3f2a…, 253 MB, commit 1a2b3c4)` as far as it is known."""
    known = []
    if resolved is not None and resolved.sha256:
        known.append(f"sha256 {resolved.sha256[:12]}…")
    if resolved is not None and resolved.size_bytes:
        known.append(f"{resolved.size_bytes / 1e6:.0f} MB")
    if resolved is not None and resolved.revision:
        known.append(f"commit {resolved.revision[:7]}")
    return f"add from {hide_url_secrets(model.source)}" + (
        f" ({', '.join(known)})" if known else ""
    )


def _spec_changes(proc: WorkerProcess, spawn: SpawnWorker) -> list[Change]:
    """What a running worker runs that differs from what is declared (SpawnWorker.spec)."""
    old, new = proc.spec(), spawn.spec()
    fields = list(new)
    return sorted(_changes(old, new), key=lambda c: fields.index(c.field))


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Field-level differences (deepdiff), as dotted paths: `build.cmake_args`."""
    diff = DeepDiff(old, new, verbose_level=2)
    changes: list[Change] = []
    for kind in ("values_changed", "type_changes"):
        for path, values in diff.get(kind, {}).items():
            changes.append(
                Change(field=_field(path), old=values["old_value"], new=values["new_value"])
            )
    for path, value in diff.get("dictionary_item_added", {}).items():
        changes.append(Change(field=_field(path), old=None, new=value))
    for path, value in diff.get("dictionary_item_removed", {}).items():
        changes.append(Change(field=_field(path), old=value, new=None))
    return changes


def _field(path: str) -> str:
    """deepdiff's `root['build']['cmake_args']` as `build.cmake_args`."""
    return ".".join(
        part.strip("'\"") for part in path.removeprefix("root[").rstrip("]").split("][")
    )


def _worker_spawn(
    hive: str, deployment: Deployment, model: Model, index: int, replica: Replica, queen_url: str
) -> SpawnWorker:
    """What replica `index` of `deployment` on `hive` runs: one spec for apply and for the
    queen's autoscaler, so a worker spawned on demand is the one apply would have spawned."""
    return SpawnWorker(
        worker_id=worker_id(hive, deployment.key, index),
        hive=hive,
        model=deployment.model,
        worker_binary=deployment.worker,
        slots=deployment.slots,
        ctx_size=deployment.ctx_size,
        prompt_cache=deployment.prompt_cache,
        threads=deployment.threads,
        device=replica.device,
        chat_format=model.chat_format,
        split_mode=replica.split_mode,
        tensor_split=replica.tensor_split,
        gpu_layers=replica.gpu_layers,
        rpc=replica.rpc,
        queen_url=queen_url,
    )


def scale_up_action(
    desired: Cluster, hive: Hive, deployment: Deployment, index: int, queen_url: str, why: str
) -> Action:
    """The create action of replica `index`, as a plan would hold it, for a worker the queen
    spawns on demand (`why`) between applies."""
    model = next(m for m in desired.models if m.name == deployment.model)
    replica = Replica(device=deployment.device)
    spawn = _worker_spawn(hive.name, deployment, model, index, replica, queen_url)
    address = worker_address(hive.name, deployment.key, index)
    reason = f"{_spawning(spawn, None)}: {why}"
    return _worker_action(address, "create", hive, reason, [], spawn, replica)


def _spawning(spawn: SpawnWorker, purpose: Purpose | None) -> str:
    """`spawn (slots 2, ctx_size 4096, cpu)`, with what a model that does not chat is for, the
    hives it spans and the threads the YAML gives it (unset: its share of the hive's cores)."""
    kind = {"embedding": ", embedding model", "rerank": ", reranker"}.get(purpose or "", "")
    if spawn.rpc:
        kind += ", spanning " + ", ".join(s.partition("@")[0] for s in spawn.rpc.split(","))
    if spawn.threads is not None:
        kind += f", {spawn.threads} thread{'s' if spawn.threads > 1 else ''}"
    return f"spawn (slots {spawn.slots}, ctx_size {spawn.ctx_size}, {spawn.device}{kind})"


def _purpose(entry: ModelEntry | None) -> Purpose | None:
    """What a model the hive holds is for, as its header says (None: not read)."""
    return entry.facts.purpose if entry is not None and entry.facts is not None else None


def _worker_action(
    address: str,
    op: Op,
    hive: Hive,
    reason: str,
    deps: list[str],
    spawn: SpawnWorker,
    replica: Replica,
    pid: int | None = None,
    changes: list[Change] | None = None,
) -> Action:
    return Action(
        address=address,
        kind="worker",
        op=op,
        hive=hive.name,
        reason=reason,
        changes=changes or [],
        depends_on=deps,
        hive_url=hive.url,
        model=spawn.model,
        pid=pid,
        spawn=spawn,
        placement=list(replica.shares),
    )


def _belongs(proc: WorkerProcess, hive: str, deployment: Deployment) -> bool:
    """Whether a running worker is one of `deployment`'s replicas on `hive` (by its id)."""
    return (
        proc.model == deployment.model
        and parse_worker_id(hive, deployment.key, proc.worker_id) is not None
    )


def _delete_worker(
    hive: str, url: str, proc: WorkerProcess, reason: str, key: str | None = ""
) -> Action:
    """Stop `proc`: addressed as replica i of deployment `key` (by default, the one its model
    names), or by pid when `key` is None or its id says no replica."""
    if key == "":
        key = proc.model
    index = None if key is None else parse_worker_id(hive, key, proc.worker_id)
    address = (
        worker_address(hive, key, index)
        if key is not None and index is not None
        else f"worker.{hive}.{proc.model}[pid {proc.pid}]"
    )
    return Action(
        address=address,
        kind="worker",
        op="delete",
        hive=hive,
        reason=f"stop: {reason}",
        hive_url=url,
        model=proc.model,
        pid=proc.pid,
    )


def _rpc_spec(proc: RpcServerProcess) -> SpawnRpcServer:
    """What a running RPC server runs, as its spawn would say it."""
    return SpawnRpcServer.model_validate(proc.model_dump(include=set(SpawnRpcServer.model_fields)))


def _rpc_server_stops_after_their_workers(
    actions: list[Action], observed: Observed
) -> list[Action]:
    """An RPC server stopped or restarted waits for the workers that span it to stop or
    restart (a server gone under a running worker breaks it)."""
    spanning: dict[str, set[int]] = {}
    for facts in observed.hives.values():
        for proc in facts.workers:
            for server in (proc.rpc or "").split(",") if proc.rpc else []:
                spanning.setdefault(server.partition("@")[0], set()).add(proc.pid)
    updated: list[Action] = []
    for action in actions:
        if action.kind == "rpc_server" and action.op == "delete":
            pids = spanning.get(action.hive, set())
            stops = [
                a.address
                for a in actions
                if a.kind == "worker" and a.op in ("delete", "replace") and a.pid in pids
            ]
            action = action.model_copy(update={"depends_on": [*action.depends_on, *stops]})
        updated.append(action)
    return updated


def _targeted(actions: list[Action], targets: list[str]) -> list[Action]:
    """Only the targeted actions and, transitively, what they depend on."""
    by_address = {a.address: a for a in actions}
    keep = {a.address for a in actions if any(covers(t, a.address) for t in targets)}
    pending = list(keep)
    while pending:
        for dep in by_address[pending.pop()].depends_on:
            if dep in by_address and dep not in keep:
                keep.add(dep)
                pending.append(dep)
    return [a for a in actions if a.address in keep]
