"""What this machine offers workers: CPU, RAM, GPUs (nvidia-smi) and the backends they allow."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import socket
import subprocess
import sys

import psutil

from rbee.wire import Capabilities, Gpu

__all__ = [
    "NVIDIA_SMI_TIMEOUT_S",
    "backends",
    "gather",
    "nvcc",
    "nvidia_gpus",
    "parse_nvidia_smi",
]

NVIDIA_SMI_TIMEOUT_S = 5.0
_QUERY = [
    "--query-gpu=index,name,memory.total,memory.free,driver_version",
    "--format=csv,noheader,nounits",
]
_NVCC_PLACES = ("/usr/local/cuda/bin/nvcc",)
_log = logging.getLogger(__name__)


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """GPUs from `nvidia-smi --query-gpu=index,name,memory.total,memory.free,driver_version
    --format=csv,noheader,nounits`."""
    gpus = []
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 5:
            continue
        # A GPU name may itself hold commas: index is first, the three numbers last.
        index, name = fields[0], ", ".join(fields[1:-3])
        total, free, driver = fields[-3:]
        try:
            gpus.append(
                Gpu(
                    index=int(index),
                    name=name,
                    memory_total_mib=int(float(total)),
                    memory_free_mib=int(float(free)),
                    driver=driver,
                )
            )
        except ValueError:
            _log.warning("unparsable nvidia-smi line=%r", line)
    return gpus


def nvidia_gpus() -> list[Gpu]:
    """NVIDIA GPUs seen by nvidia-smi; none when it is missing, fails or hangs."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        result = subprocess.run(
            [binary, *_QUERY],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _log.warning("nvidia-smi failed error=%s", exc)
        return []
    if result.returncode != 0:
        _log.warning("nvidia-smi exited rc=%d stderr=%r", result.returncode, result.stderr.strip())
        return []
    return parse_nvidia_smi(result.stdout)


def nvcc() -> str | None:
    """CUDA's compiler, which a cuda build needs: on PATH or where CUDA installs it."""
    found = shutil.which("nvcc")
    if found is None:
        found = next((p for p in _NVCC_PLACES if os.access(p, os.X_OK)), None)
    return found


def backends(system: str, machine: str, gpus: list[Gpu]) -> list[str]:
    """The backends a worker can run with here: cpu always, cuda with an NVIDIA GPU, metal on
    Apple silicon."""
    found = ["cpu"]
    if gpus:
        found.append("cuda")
    if system == "darwin" and machine == "arm64":
        found.append("metal")
    return found


def gather() -> Capabilities:
    """This machine's capabilities, read now."""
    memory = psutil.virtual_memory()
    gpus = nvidia_gpus()
    system, machine = platform.system().lower(), platform.machine()
    return Capabilities(
        hostname=socket.gethostname(),
        os=system,
        arch=machine,
        cpu_count=os.cpu_count() or 1,
        ram_total_bytes=memory.total,
        ram_available_bytes=memory.available,
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        gpus=gpus,
        backends=backends(system, machine, gpus),
        nvcc=nvcc(),
    )
