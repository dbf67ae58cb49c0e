"""Where a cluster's workers go, checked against what the hives have (pure, like the planner).

Before anything is applied: a worker binary a hive cannot run (cuda without an NVIDIA GPU,
a cuda build without nvcc, metal off Apple silicon), a GPU it does not have, a model bigger
than the devices of its worker, or a device (a GPU, or the memory a spanned hive lends) that
the declared workers would over-commit is a plan error for the deployments concerned; the
other deployments and hives are still planned.

A worker on several devices (`gpus_per_worker`, `span:`) gets its split here: the share of
each device (`tensor_split:`, else each device's memory), the layers its CPU keeps, the RPC
servers it spans; `layout` says where each layer then goes, as llama.cpp will put it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from rbee.config.models import Cluster, Deployment, Hive, WorkerBinary
from rbee.defaults import SplitMode
from rbee.plan.layout import Device, layout, parse_split, split_text
from rbee.plan.observed import HiveFacts
from rbee.plan.resources import hive_address, worker_address, worker_binary_address
from rbee.wire import Capabilities, ModelEntry, SpawnRpcServer, WorkerProcess
from rbee.wire.plan import DeviceShare, Note

__all__ = ["Placement", "Replica", "free_bytes", "place", "vram_bytes"]

_MIB = 1 << 20


@dataclass(frozen=True)
class Replica:
    """What one worker runs on: its device (`cuda:0,cuda:1` for several GPUs) and, for a
    worker on several devices, its split as the spawn carries it and where its bytes go."""

    device: str
    split_mode: SplitMode | None = None
    tensor_split: str | None = None
    gpu_layers: int | None = None
    rpc: str | None = None
    shares: tuple[DeviceShare, ...] = ()


@dataclass
class Placement:
    """Per (hive, deployment key) its replicas (each possible one, for a range of replicas),
    per spanned hive its RPC server, and what cannot be placed and why."""

    replicas: dict[tuple[str, str], list[Replica]] = field(default_factory=dict)
    servers: dict[str, SpawnRpcServer] = field(default_factory=dict)
    #: Each error with the hive whose plan reports it.
    errors: list[tuple[str, Note]] = field(default_factory=list)
    waiting: dict[tuple[str, str], str] = field(default_factory=dict)
    spans: dict[tuple[str, str], dict[str, SpawnRpcServer]] = field(default_factory=dict)

    def blocked(self, hive: str, key: str) -> bool:
        return (hive, key) not in self.replicas


def vram_bytes(entry: ModelEntry, slots: int, ctx_size: int) -> int | None:
    """What one worker of this model holds on its GPU: the weights once (its slots are
    sequences of one context) plus `ctx_size` KV cells per slot. None when the model's header
    facts are unknown."""
    if entry.facts is None or entry.facts.kv_bytes_per_token is None:
        return None
    return entry.size_bytes + slots * ctx_size * entry.facts.kv_bytes_per_token


def place(desired: Cluster, hives: dict[str, HiveFacts]) -> Placement:
    """Place every deployment of `desired` on the hives as observed (a hive that has not
    answered has no capabilities: then only what the YAML alone decides is checked)."""
    placement = Placement()
    binaries = {b.name: b for b in desired.worker_binaries}
    declared = {h.name: h for h in desired.hives}
    for hive in desired.hives:
        facts = hives.get(hive.name)
        caps = facts.capabilities if facts is not None else None
        entries = {m.name: m for m in facts.models} if facts is not None else {}
        for deployment in desired.deployments:
            if hive.name not in desired.hive_names(deployment):
                continue
            binary = binaries[deployment.worker]
            problem = _unservable(hive, binary, caps)
            address = worker_binary_address(hive.name, deployment.worker)
            replicas: list[Replica] = []
            if problem is None:
                address = worker_address(hive.name, deployment.key, 0)
                groups, problem = _devices(hive, deployment, caps)
            if problem is None and deployment.span:
                lent, problem = _lent(deployment, binary, declared, hives, placement)
                servers = {
                    h.name: SpawnRpcServer(
                        worker_binary=binary.name, device=",".join(devices), port=h.rpc_port
                    )
                    for h, _, devices in lent
                }
            if problem is None:
                for group in groups:
                    if deployment.span or "," in group:
                        replica, problem = _split(
                            hive, deployment, caps, group, lent if deployment.span else [],
                            entries.get(deployment.model), placement,
                        )  # fmt: skip
                        if problem is not None:
                            break
                        replicas.append(replica)
                    else:
                        replicas.append(Replica(device=group))
            if problem is not None:
                placement.errors.append((hive.name, Note(address=address, message=problem)))
                continue
            placement.replicas[(hive.name, deployment.key)] = replicas
            if deployment.span:
                placement.spans[(hive.name, deployment.key)] = servers
    _check_memory(desired, hives, placement)
    # Only the workers placed get their RPC servers.
    placement.servers = {
        name: server
        for (hive_name, key), servers in placement.spans.items()
        if not placement.blocked(hive_name, key) and (hive_name, key) not in placement.waiting
        for name, server in servers.items()
    }
    return placement


def _unservable(hive: Hive, binary: WorkerBinary, caps: Capabilities | None) -> str | None:
    if caps is None:
        return None
    if binary.backend == "cuda" and "cuda" not in caps.backends:
        return (
            f"hive {hive.name} has no NVIDIA GPU: worker binary {binary.name!r} (cuda) cannot run"
        )
    if binary.backend == "cuda" and binary.build is not None and caps.nvcc is None:
        return (
            f"building worker binary {binary.name!r} needs CUDA's compiler (nvcc) on hive "
            f"{hive.name}: install the CUDA toolkit there, or give `path:` to a built runtime"
        )
    if binary.backend == "metal" and "metal" not in caps.backends:
        return (
            f"worker binary {binary.name!r} (metal) needs macOS on Apple silicon; hive "
            f"{hive.name} runs {caps.os}/{caps.arch}"
        )
    return None


def _devices(
    hive: Hive, deployment: Deployment, caps: Capabilities | None
) -> tuple[list[str], str | None]:
    """Each worker's device: one GPU, cpu, or `gpus_per_worker` GPUs (`cuda:0,cuda:1`)."""
    per = deployment.gpus_per_worker
    if deployment.devices == "all":
        if caps is None:
            return [], (
                f"`devices: all` needs hive {hive.name}'s GPUs, known once it answers: "
                "apply again after it starts"
            )
        if not caps.gpus:
            return [], f"`devices: all`: hive {hive.name} has no NVIDIA GPU"
        gpus = [f"cuda:{gpu.index}" for gpu in caps.gpus]
        if len(gpus) % per:
            return [], (
                f"`gpus_per_worker: {per}`: hive {hive.name} has {len(gpus)} GPUs, not a "
                f"multiple of {per}"
            )
        groups = [",".join(gpus[i : i + per]) for i in range(0, len(gpus), per)]
        if deployment.span and len(groups) != 1:
            return [], (
                f"a worker that spans hives is one worker: hive {hive.name} has {len(gpus)} "
                f"GPUs, give `gpus_per_worker: {len(gpus)}` or list its GPUs in `devices:`"
            )
        return groups, None
    # A range is placed at its max: the queen may scale up to it between applies.
    replicas = deployment.replicas
    count = replicas if isinstance(replicas, int) else replicas.max
    devices = (
        list(deployment.devices) if deployment.devices is not None else [deployment.device] * count
    )
    if caps is not None:
        have = {gpu.index for gpu in caps.gpus}
        if deployment.devices is not None and per > len(have):
            return [], (
                f"`gpus_per_worker: {per}` is more GPUs than hive {hive.name} has ({len(have)})"
            )
        for device in devices:
            backend, _, index = device.partition(":")
            if backend == "cuda" and int(index) not in have:
                known = ", ".join(f"cuda:{i}" for i in sorted(have)) or "none"
                return [], f"hive {hive.name} has no GPU {device} (it has {known})"
    if deployment.devices is not None:
        return [",".join(devices[i : i + per]) for i in range(0, len(devices), per)], None
    return devices, None


def _lent(
    deployment: Deployment,
    binary: WorkerBinary,
    declared: dict[str, Hive],
    hives: dict[str, HiveFacts],
    placement: Placement,
) -> tuple[list[tuple[Hive, Capabilities, list[str]]], str | None]:
    """Each spanned hive with the devices its RPC server lends: all its GPUs to a cuda worker
    binary, else its CPU (and memory)."""
    lent: list[tuple[Hive, Capabilities, list[str]]] = []
    for name in deployment.span:
        hive = declared[name]
        facts = hives.get(name)
        caps = facts.capabilities if facts is not None else None
        if caps is None:
            return [], (
                f"`span:` lends hive {name}'s devices, known once it answers: apply again "
                "after it starts"
            )
        problem = _unservable(hive, binary, caps)
        if problem is not None:
            return [], f"cannot span hive {name}: {problem}"
        devices = (
            [f"cuda:{gpu.index}" for gpu in caps.gpus] if binary.backend == "cuda" else ["cpu"]
        )
        taken = placement.servers.get(name)
        if taken is not None and taken.worker_binary != binary.name:
            return [], (
                f"hive {name} lends its devices with worker binary {taken.worker_binary!r} "
                f"already: one RPC server per hive, so its spanning workers share a binary"
            )
        placement.servers[name] = SpawnRpcServer(worker_binary=binary.name)
        lent.append((hive, caps, devices))
    return lent, None


def _memory(caps: Capabilities, device: str) -> int:
    """A device's whole memory: a GPU's, else the machine's RAM. The split is made from it,
    not from what is free, so that it stays the same once the worker holds its share."""
    if device.startswith("cuda:"):
        index = int(device.partition(":")[2])
        gpu = next((g for g in caps.gpus if g.index == index), None)
        return gpu.memory_total_mib * _MIB if gpu is not None else 0
    return caps.ram_total_bytes or 0


def _split(
    hive: Hive,
    deployment: Deployment,
    caps: Capabilities | None,
    group: str,
    lent: list[tuple[Hive, Capabilities, list[str]]],
    entry: ModelEntry | None,
    placement: Placement,
) -> tuple[Replica, str | None]:
    """A worker on several devices: its split, in the spawn's terms, and where its bytes go."""
    on_cpu = group == "cpu"
    local = [] if on_cpu else [Device(hive.name, d) for d in group.split(",")]
    remote = [Device(h.name, d, rpc=True) for h, _, devices in lent for d in devices]
    shown = ([Device(hive.name, "cpu")] if on_cpu else []) + local + remote
    if deployment.tensor_split is not None:
        shares = list(deployment.tensor_split)
        if len(shares) != len(shown):
            names = ", ".join(_label(d, hive.name) for d in shown)
            return Replica(device=group), (
                f"`tensor_split:` gives {len(shares)} shares; the worker uses {len(shown)} "
                f"devices: {names}"
            )
    elif caps is None:
        return Replica(device=group), (
            f"the split over hive {hive.name}'s devices needs their memory, known once it "
            "answers: apply again after it starts"
        )
    else:
        memory = {d.hive: c for h, c, _ in lent for d in remote if d.hive == h.name}
        memory[hive.name] = caps
        shares = [float(_memory(memory[d.hive], d.device)) for d in shown]
    facts = entry.facts if entry is not None else None
    known = facts is not None and facts.layer_bytes is not None
    gpu_layers = None
    if on_cpu:
        if facts is None or facts.layer_bytes is None:
            placement.waiting[(hive.name, deployment.key)] = (
                f"placed once the header of model {deployment.model} is read on hive "
                f"{hive.name}: apply again after it is fetched"
            )
            return Replica(device=group), None
        layers = len(facts.layer_bytes) + 1
        kept = round(layers * shares[0] / sum(shares))
        gpu_layers = layers - kept
        shares = shares[1:]
    # llama.cpp's order: the RPC servers' devices, then the worker's own GPUs.
    ordered = remote + local
    by_device = dict(zip(local + remote, shares, strict=True))
    tensor_split = split_text([by_device[d] for d in ordered])
    rpc = ",".join(f"{h.name}@{h.host}:{h.rpc_port}" for h, _, _ in lent) or None
    where: tuple[DeviceShare, ...] = ()
    if known and facts is not None:
        computed = layout(
            facts,
            deployment.slots,
            deployment.ctx_size,
            Device(hive.name, "cpu"),
            ordered,
            parse_split(tensor_split),
            gpu_layers,
        )
        where = tuple(computed or ())
    return Replica(
        device=group,
        split_mode=deployment.split_mode,
        tensor_split=tensor_split,
        gpu_layers=gpu_layers,
        rpc=rpc,
        shares=where,
    ), None


def _label(device: Device, head: str) -> str:
    """`cuda:0` on the worker's hive, `gpu2/cuda:0 (rpc)` lent by another."""
    return device.device if device.hive == head else f"{device.hive}/{device.device} (rpc)"


def _check_memory(desired: Cluster, hives: dict[str, HiveFacts], placement: Placement) -> None:
    """A worker bigger than its devices, or a device (a GPU, or a spanned hive's memory)
    over-committed by the workers placed on it, blocks every deployment concerned."""
    deployments = {d.key: d for d in desired.deployments}
    need: dict[tuple[str, str], int] = {}
    users: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for (hive, key), replicas in placement.replicas.items():
        deployment = deployments[key]
        facts = hives.get(hive)
        entry = (
            next((m for m in facts.models if m.name == deployment.model), None) if facts else None
        )
        for replica in replicas:
            for where, size in _bytes(hive, replica, entry, deployment.slots, deployment.ctx_size):
                need[where] = need.get(where, 0) + size
                users.setdefault(where, [])
                if (hive, key) not in users[where]:
                    users[where].append((hive, key))
    held: dict[tuple[str, str], int] = {}
    for name, facts in hives.items():
        for proc in facts.workers:
            entry = next((m for m in facts.models if m.name == proc.model), None)
            for where, size in _held(name, proc, entry, hives):
                held[where] = held.get(where, 0) + size
    for (hive, key), replicas in list(placement.replicas.items()):
        for index, replica in enumerate(replicas):
            problem = _too_big(hive, deployments[key], replica, hives, held)
            if problem is not None:
                note = Note(address=worker_address(hive, key, index), message=problem)
                placement.errors.append((hive, note))
                placement.replicas.pop((hive, key), None)
                break
    for where in sorted(need, key=lambda w: (list(hives).index(w[0]) if w[0] in hives else 0, w)):
        hive, device = where
        free = free_bytes(hives.get(hive), device)
        if free is None:
            continue
        available = free + held.get(where, 0)
        concerned = [u for u in users[where] if not placement.blocked(*u)]
        if need[where] <= available or not concerned:
            continue
        named = ", ".join(k if h == hive else f"{k} of hive {h} (over RPC)" for h, k in concerned)
        caps = hives[hive].capabilities
        gpu = next((g for g in caps.gpus if f"cuda:{g.index}" == device), None) if caps else None
        what = f"GPU {device} ({gpu.name})" if gpu is not None else "the memory"
        message = (
            f"{what} of hive {hive} is over-committed: the workers of {named} need "
            f"{need[where]} bytes, {available} are free"
        )
        placement.errors.append((hive, Note(address=hive_address(hive), message=message)))
        for user in concerned:
            placement.replicas.pop(user, None)


def _bytes(
    hive: str, replica: Replica, entry: ModelEntry | None, slots: int, ctx_size: int
) -> Iterable[tuple[tuple[str, str], int]]:
    """What one worker holds on each device whose memory is checked: its GPUs, and the
    devices other hives lend it (its own CPU's memory is not checked)."""
    if replica.shares:
        for share in replica.shares:
            if share.hive != hive or share.device != "cpu":
                yield (share.hive, share.device), share.total_bytes
    elif replica.device.startswith("cuda:") and "," not in replica.device and entry is not None:
        one = vram_bytes(entry, slots, ctx_size)
        if one is not None:
            yield (hive, replica.device), one


def _held(
    hive: str, proc: WorkerProcess, entry: ModelEntry | None, hives: dict[str, HiveFacts]
) -> Iterable[tuple[tuple[str, str], int]]:
    """What a running worker holds on each device: it comes back when the plan replaces or
    stops it, and a worker in place already holds its own share."""
    if entry is None:
        return
    if not (proc.rpc or proc.tensor_split or "," in proc.device):
        yield from _bytes(hive, Replica(device=proc.device), entry, proc.slots, proc.ctx_size)
        return
    if entry.facts is None:
        return
    remote: list[Device] = []
    for server in (proc.rpc or "").split(",") if proc.rpc else []:
        name = server.partition("@")[0]
        facts = hives.get(name)
        lent = facts.rpc_servers[0].device if facts and facts.rpc_servers else "cpu"
        remote += [Device(name, d, rpc=True) for d in lent.split(",")]
    local = [] if proc.device == "cpu" else [Device(hive, d) for d in proc.device.split(",")]
    shares = layout(
        entry.facts,
        proc.slots,
        proc.ctx_size,
        Device(hive, "cpu"),
        remote + local,
        parse_split(proc.tensor_split),
        proc.gpu_layers,
    )
    yield from _bytes(hive, Replica(device=proc.device, shares=tuple(shares or ())), None, 0, 0)


def free_bytes(facts: HiveFacts | None, device: str) -> int | None:
    """What a device has free now: a GPU's memory, or a machine's available RAM."""
    caps = facts.capabilities if facts is not None else None
    if caps is None:
        return None
    if device.startswith("cuda:"):
        gpu = next((g for g in caps.gpus if f"cuda:{g.index}" == device), None)
        if gpu is None or gpu.memory_free_mib is None:
            return None
        return gpu.memory_free_mib * _MIB
    return caps.ram_available_bytes


def _too_big(
    hive: str,
    deployment: Deployment,
    replica: Replica,
    hives: dict[str, HiveFacts],
    held: dict[tuple[str, str], int],
) -> str | None:
    """Why a worker on several devices cannot fit them all together, if it cannot."""
    wanted = list(_bytes(hive, replica, None, 0, 0))
    if not wanted:
        return None
    room = 0
    for where, _ in wanted:
        free = free_bytes(hives.get(where[0]), where[1])
        if free is None:
            return None
        room += free + held.get(where, 0)
    size = sum(size for _, size in wanted)
    if size <= room:
        return None
    return (
        f"model {deployment.model} does not fit its devices: it needs {_gb(size)} there "
        f"(weights and KV cache for {deployment.slots} slots of {deployment.ctx_size} tokens), "
        f"they have {_gb(room)} free in all"
    )


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"
