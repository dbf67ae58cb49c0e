"""Where a hive's workers go, checked against what the hive has (pure, like the planner).

Before anything is applied: a worker binary the hive cannot run (cuda without an NVIDIA GPU,
a cuda build without nvcc, metal off Apple silicon), a GPU it does not have, or a GPU whose
memory the declared workers would over-commit is a plan error for the deployments concerned;
the hive's other deployments and the other hives are still planned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from rbee.config.models import Deployment, Hive, WorkerBinary
from rbee.plan.resources import hive_address, worker_address, worker_binary_address
from rbee.wire import Capabilities, ModelEntry, WorkerProcess
from rbee.wire.plan import Note

__all__ = ["Placement", "place", "vram_bytes"]

_MIB = 1 << 20


@dataclass
class Placement:
    """Per deployment (by its key) the device of each replica (of each possible one, for a
    range of replicas), or why it cannot be placed."""

    devices: dict[str, list[str]] = field(default_factory=dict)
    errors: list[Note] = field(default_factory=list)

    def blocked(self, key: str) -> bool:
        return key not in self.devices


def vram_bytes(entry: ModelEntry, slots: int, ctx_size: int) -> int | None:
    """What one worker of this model holds on its GPU: the weights once (its slots are
    sequences of one context) plus `ctx_size` KV cells per slot. None when the model's header
    facts are unknown."""
    if entry.facts is None or entry.facts.kv_bytes_per_token is None:
        return None
    return entry.size_bytes + slots * ctx_size * entry.facts.kv_bytes_per_token


def place(
    hive: Hive,
    deployments: Iterable[Deployment],
    binaries: dict[str, WorkerBinary],
    caps: Capabilities | None,
    entries: dict[str, ModelEntry],
    running: list[WorkerProcess],
) -> Placement:
    """Check each deployment of `hive` against its capabilities (`caps`, None while the hive
    has not answered: then only what the YAML alone decides is checked)."""
    placement = Placement()
    for deployment in deployments:
        problem = _unservable(hive, binaries[deployment.worker], caps)
        address = worker_binary_address(hive.name, deployment.worker)
        if problem is None:
            devices, problem = _devices(hive, deployment, caps)
            address = worker_address(hive.name, deployment.key, 0)
        if problem is not None:
            placement.errors.append(Note(address=address, message=problem))
            continue
        placement.devices[deployment.key] = devices
    if caps is not None:
        _check_memory(hive, list(deployments), caps, entries, running, placement)
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
    if deployment.devices == "all":
        if caps is None:
            return [], (
                f"`devices: all` needs hive {hive.name}'s GPUs, known once it answers: "
                "apply again after it starts"
            )
        if not caps.gpus:
            return [], f"`devices: all`: hive {hive.name} has no NVIDIA GPU"
        return [f"cuda:{gpu.index}" for gpu in caps.gpus], None
    # A range is placed at its max: the queen may scale up to it between applies.
    replicas = deployment.replicas
    count = replicas if isinstance(replicas, int) else replicas.max
    devices = (
        list(deployment.devices) if deployment.devices is not None else [deployment.device] * count
    )
    if caps is not None:
        have = {gpu.index for gpu in caps.gpus}
        for device in devices:
            backend, _, index = device.partition(":")
            if backend == "cuda" and int(index) not in have:
                known = ", ".join(f"cuda:{i}" for i in sorted(have)) or "none"
                return [], f"hive {hive.name} has no GPU {device} (it has {known})"
    return devices, None


def _check_memory(
    hive: Hive,
    deployments: list[Deployment],
    caps: Capabilities,
    entries: dict[str, ModelEntry],
    running: list[WorkerProcess],
    placement: Placement,
) -> None:
    """Over-committed GPUs block every deployment that would put a worker on them."""
    gpus = {f"cuda:{gpu.index}": gpu for gpu in caps.gpus}
    needed: dict[str, int] = {}
    for deployment in deployments:
        entry = entries.get(deployment.model)
        for device in placement.devices.get(deployment.key, []):
            one = vram_bytes(entry, deployment.slots, deployment.ctx_size) if entry else None
            if device in gpus and one is not None:
                needed[device] = needed.get(device, 0) + one
    # What rbee's own running workers hold comes back when the plan replaces or stops them.
    held: dict[str, int] = {}
    for proc in running:
        entry = entries.get(proc.model)
        one = vram_bytes(entry, proc.slots, proc.ctx_size) if entry else None
        if proc.device in gpus and one is not None:
            held[proc.device] = held.get(proc.device, 0) + one
    for device, need in sorted(needed.items()):
        gpu = gpus[device]
        if gpu.memory_free_mib is None:
            continue
        available = gpu.memory_free_mib * _MIB + held.get(device, 0)
        if need <= available:
            continue
        users = [d.key for d in deployments if device in placement.devices.get(d.key, [])]
        placement.errors.append(
            Note(
                address=hive_address(hive.name),
                message=f"GPU {device} ({gpu.name}) of hive {hive.name} is over-committed: the "
                f"workers of {', '.join(users)} need {need} bytes, {available} are free",
            )
        )
        for key in users:
            placement.devices.pop(key, None)
