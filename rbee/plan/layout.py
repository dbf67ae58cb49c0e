"""Where llama.cpp puts a worker's layers when it spans devices: its own computation, replayed.

A worker loads one model over its devices in llama.cpp's order (the RPC servers' devices
first, then its own GPUs). The input layer (the token embeddings) stays on the worker's CPU;
layers 0 … n_layer (the blocks, then the output layer) below `n_layer + 1 - gpu_layers` stay
there too, and each other layer goes to the device whose cumulative share of the split first
exceeds its position (`llama_model::load_tensors`, vendored llama.cpp's src/llama-model.cpp).
A worker with no GPU of its own keeps the output layer on its CPU too (the worker overrides
where those tensors go: the logits then never cross the network). A block's KV cache lives
with its block. Pure arithmetic, so the plan shows what will run.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from rbee.wire import GgufFacts
from rbee.wire.plan import DeviceShare

__all__ = ["Device", "layout", "parse_split", "split_text"]


@dataclass(frozen=True)
class Device:
    """One device a worker uses: `cpu` or `cuda:N` of a hive, lent over RPC or its own."""

    hive: str
    device: str
    rpc: bool = False


def _f32(value: float) -> float:
    """`value` rounded to a C float, as llama.cpp computes the split points."""
    rounded: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return rounded


def layout(
    facts: GgufFacts,
    slots: int,
    ctx_size: int,
    cpu: Device,
    devices: list[Device],
    splits: list[float],
    gpu_layers: int | None,
) -> list[DeviceShare] | None:
    """Each device's weights and KV cache for a worker whose CPU is `cpu` and whose devices
    (in llama.cpp's order) take `splits` of its offloaded layers; None when the model's
    header facts lack the weights per layer. Shares in the order the plan shows them: the
    worker's CPU, its own GPUs, then the RPC devices."""
    blocks = facts.layer_bytes
    if blocks is None or facts.kv_bytes_per_token is None or facts.input_bytes is None:
        return None
    n_layer = len(blocks)
    kv_total = facts.kv_bytes_per_token * ctx_size * slots
    offloaded = (n_layer + 1 if devices else 0) if gpu_layers is None else gpu_layers
    first_gpu = max(n_layer + 1 - offloaded, 0)
    active = min(offloaded, n_layer + 1) if devices else 0
    points = _split_points(splits if any(splits) else [1.0] * len(devices))
    weights = {d: 0 for d in [cpu, *devices]}
    kv = dict.fromkeys(weights, 0)
    layers = dict.fromkeys(weights, 0)
    weights[cpu] += facts.input_bytes
    for il in range(n_layer + 1):
        where = cpu
        if first_gpu <= il and il - first_gpu < active:
            at = _f32(_f32(il - first_gpu) / active)
            where = devices[bisect.bisect_right(points, at)]
        if il == n_layer and devices and all(d.rpc for d in devices):
            where = cpu  # the output layer of a worker with no GPU of its own
        layers[where] += 1
        if il < n_layer:
            weights[where] += blocks[il]
            # The cache split exactly: a share of the whole per block, remainders spread.
            kv[where] += kv_total * (il + 1) // n_layer - kv_total * il // n_layer
        else:
            weights[where] += facts.output_bytes or 0
    shown = [cpu, *(d for d in devices if not d.rpc), *(d for d in devices if d.rpc)]
    return [
        DeviceShare(
            hive=d.hive,
            device=d.device,
            rpc=d.rpc,
            layers=layers[d],
            weights_bytes=weights[d],
            kv_bytes=kv[d],
        )
        for d in shown
    ]


def _split_points(splits: list[float]) -> list[float]:
    """llama.cpp's cumulative, normalised split points, in C floats."""
    total = 0.0
    points = []
    for share in splits:
        total = _f32(total + _f32(share))
        points.append(total)
    return [_f32(point / total) for point in points]


def split_text(shares: list[float]) -> str:
    """Shares as the spawn's `tensor_split` (normalised, four decimals: `0.25,0.75`)."""
    total = sum(shares)
    return ",".join(f"{max(share / total, 0.0001):.4f}".rstrip("0").rstrip(".") for share in shares)


def parse_split(text: str | None) -> list[float]:
    """A spawn's `tensor_split` back as numbers (empty when unset)."""
    return [float(part) for part in text.split(",")] if text else []
