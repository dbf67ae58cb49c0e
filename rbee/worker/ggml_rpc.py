"""llama.cpp's RPC backend, reached through ggml's backend registry (ctypes).

llama-cpp-python 0.3.36 no longer takes `rpc_servers`: a process that uses a remote machine's
devices adds each RPC server to ggml's registry itself (`ggml_backend_rpc_add_server`), and
llama.cpp then puts them first in a model's devices. An RPC server lends this machine's devices
(`ggml_backend_rpc_start_server`). Both exist only in a llama.cpp built with `GGML_RPC=on`,
which the runtimes rbee builds are.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import llama_cpp

from rbee.errors import RbeeError

__all__ = [
    "RpcUnavailableError",
    "add_server",
    "host_buffer_type",
    "server_devices",
    "start_server",
]

_CPU, _GPU = 0, 1  # enum ggml_backend_dev_type


class RpcUnavailableError(RbeeError):
    """This runtime's llama.cpp was built without its RPC backend."""


def add_server(endpoint: str) -> None:
    """Register the RPC server at `endpoint` (host:port) as devices of this process: models
    loaded from now on use them (llama.cpp puts RPC devices first)."""
    add = _proc("ggml_backend_rpc_add_server", ctypes.c_void_p, [ctypes.c_char_p])
    reg = add(endpoint.encode())
    if not reg:
        raise RbeeError(f"llama.cpp's RPC backend could not reach {endpoint}")
    _ggml().ggml_backend_register(ctypes.c_void_p(reg))


def server_devices(gpus: bool) -> list[int]:
    """The devices an RPC server lends: every GPU this process sees (CUDA_VISIBLE_DEVICES
    already names the worker binary's own), else the CPU."""
    ggml = _ggml()
    wanted = _GPU if gpus else _CPU
    devices = []
    for index in range(ggml.ggml_backend_dev_count()):
        device = ggml.ggml_backend_dev_get(index)
        if ggml.ggml_backend_dev_type(ctypes.c_void_p(device)) == wanted:
            devices.append(device)
    if not devices:
        raise RbeeError("no GPU is visible to this RPC server" if gpus else "no CPU device")
    return devices


def host_buffer_type() -> int:
    """The CPU's buffer type: where a tensor kept on this machine's memory lives."""
    ggml = _ggml()
    return int(ggml.ggml_backend_dev_buffer_type(ggml.ggml_backend_dev_by_type(_CPU)))


def start_server(endpoint: str, cache_dir: Path, threads: int, devices: list[int]) -> None:
    """Serve `devices` to RPC clients at `endpoint`, keeping received tensors in `cache_dir`;
    returns only when the server fails to start."""
    start = _proc(
        "ggml_backend_rpc_start_server",
        None,
        [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p],
    )
    array = (ctypes.c_void_p * len(devices))(*devices)
    start(endpoint.encode(), os.fsencode(cache_dir), threads, len(devices), array)


def _proc(name: str, restype: Any, argtypes: list[Any]) -> Any:
    ggml = _ggml()
    reg = ggml.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RpcUnavailableError(
            "this worker binary's llama.cpp has no RPC backend",
            hint="rbee builds runtimes with GGML_RPC=on: rebuild it (a `path:` runtime needs "
            "llama-cpp-python built with CMAKE_ARGS=-DGGML_RPC=on)",
        )
    address = ggml.ggml_backend_reg_get_proc_address(ctypes.c_void_p(reg), name.encode())
    if not address:
        raise RpcUnavailableError(f"llama.cpp's RPC backend has no {name}")
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


_loaded: ctypes.CDLL | None = None


def _ggml() -> ctypes.CDLL:
    """ggml's library as llama-cpp-python loaded it: the registry llama.cpp reads is that
    instance's. A wheel holds `libggml.so`, `.so.0` and `.so.0.x` as copies (not links), and
    each file would load as a library of its own: the one mapped in this process is used."""
    global _loaded
    if _loaded is None:
        lib = Path(llama_cpp.__file__).with_name("lib").resolve()
        mapped = {
            Path(line.split(maxsplit=5)[5].strip())
            for line in Path("/proc/self/maps").read_text().splitlines()
            if line.count(" ") >= 5 and "/libggml.so" in line
        }
        ggml = ctypes.CDLL(str(next((p for p in mapped if p.parent == lib), lib / "libggml.so.0")))
        ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
        ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        ggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
        ggml.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
        _loaded = ggml
    return _loaded
