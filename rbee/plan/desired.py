"""What the queen keeps converged after an apply: the YAML, or for a targeted apply the last
desired state with only the targeted resources taken from the YAML.

Self-heal converges on the desired state. A targeted apply (`--target model.local.x`) must not
widen it: were the whole YAML stored, self-heal would go on to create what the target left out
(`worker.local.x[0]`) and retry it until a full apply.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from rbee.config.models import Cluster, Deployment
from rbee.plan.resources import (
    covers,
    deployment_address,
    hive_address,
    model_address,
    worker_binary_address,
)

__all__ = ["desired_after"]


def desired_after(previous: Cluster | None, cluster: Cluster, targets: list[str]) -> Cluster:
    """The desired state once an apply of `cluster` limited to `targets` has run.

    Without targets it is `cluster`. With targets, each YAML entry comes from `cluster` only
    when a target covers it whole, from `previous` otherwise:
    - a hive when a target covers `hive.NAME`;
    - a model or worker binary when a target names it on some hive (`model.HIVE.NAME`);
    - a deployment when targets cover every hive's `worker.HIVE.KEY` (all its replicas), with
      the hives, model and worker binary it needs. A target naming one replica
      (`worker.local.x[2]`) leaves the deployment as it was: self-heal never deletes, and
      `rbee plan` shows the difference until a full apply.
    The queen's own settings (queen, self_heal, prune, peer_fetch) stay `previous`'s.
    """
    if not targets:
        return cluster
    base = previous or cluster.model_copy(
        update={"hives": [], "models": [], "worker_binaries": [], "deployments": []}
    )

    def named(address: str) -> bool:
        return any(covers(t, address) for t in targets)

    taken_deployments: list[Deployment] = []
    for deployment in cluster.deployments:
        runs_on = cluster.hive_names(deployment)
        addresses = [deployment_address(h, deployment.key) for h in runs_on]
        if runs_on and all(named(a) for a in addresses):
            taken_deployments.append(deployment.model_copy(update={"hives": runs_on}))
    needed = {h for d in taken_deployments for h in cluster.hive_names(d)}
    hives = {h.name for h in cluster.hives if h.name in needed or named(hive_address(h.name))}
    on_a_hive = [h.name for h in cluster.hives]
    models = {d.model for d in taken_deployments} | {
        m.name for m in cluster.models if any(named(model_address(h, m.name)) for h in on_a_hive)
    }
    binaries = {d.worker for d in taken_deployments} | {
        b.name
        for b in cluster.worker_binaries
        if any(named(worker_binary_address(h, b.name)) for h in on_a_hive)
    }
    keys = {d.key for d in taken_deployments}
    return base.model_copy(
        update={
            "hives": _merged(base.hives, [h for h in cluster.hives if h.name in hives]),
            "models": _merged(base.models, [m for m in cluster.models if m.name in models]),
            "worker_binaries": _merged(
                base.worker_binaries, [b for b in cluster.worker_binaries if b.name in binaries]
            ),
            "deployments": [
                *(d for d in base.deployments if d.key not in keys),
                *taken_deployments,
            ],
        }
    )


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_Entry = TypeVar("_Entry", bound=_Named)


def _merged(kept: list[_Entry], taken: list[_Entry]) -> list[_Entry]:
    """`kept` with every entry of the same name in `taken` replaced, new ones appended."""
    by_name = {item.name: item for item in taken}
    out = [by_name.pop(item.name, item) for item in kept]
    return [*out, *by_name.values()]
