"""Resource addresses (`hive.gpu1`, `model.gpu1.gemma3-270m`, `worker.gpu1.gemma3-270m[0]`)."""

from __future__ import annotations

__all__ = [
    "covers",
    "deployment_address",
    "hive_address",
    "model_address",
    "parse_worker_id",
    "rpc_server_address",
    "worker_address",
    "worker_binary_address",
    "worker_id",
]


def hive_address(hive: str) -> str:
    return f"hive.{hive}"


def model_address(hive: str, model: str) -> str:
    return f"model.{hive}.{model}"


def worker_binary_address(hive: str, name: str) -> str:
    return f"worker_binary.{hive}.{name}"


def rpc_server_address(hive: str) -> str:
    """`rpc_server.HIVE`: the server that lends a hive's devices to workers spanning it."""
    return f"rpc_server.{hive}"


def deployment_address(hive: str, model: str) -> str:
    """`worker.HIVE.KEY`: all the replicas of one deployment on one hive."""
    return f"worker.{hive}.{model}"


def worker_address(hive: str, model: str, index: int) -> str:
    return f"{deployment_address(hive, model)}[{index}]"


def worker_id(hive: str, model: str, index: int) -> str:
    """The id a worker is spawned with; it carries its address so plans can match it back."""
    return f"{hive}.{model}.{index}"


def parse_worker_id(hive: str, model: str, wid: str) -> int | None:
    """The replica index in `wid`, or None when the id is not one rbee gave for (hive, model)."""
    prefix = f"{hive}.{model}."
    if not wid.startswith(prefix):
        return None
    tail = wid[len(prefix) :]
    return int(tail) if tail.isdigit() else None


def covers(target: str, address: str) -> bool:
    """`target` (`--target`) names `address` itself or a resource that contains it
    (`worker.local` covers `worker.local.x[0]`)."""
    return address == target or (address.startswith(target) and address[len(target)] in ".[")
