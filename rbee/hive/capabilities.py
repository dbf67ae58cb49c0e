"""What this machine offers workers: CPU, RAM, GPUs (nvidia-smi) and the backends they allow."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import socket
import subprocess

import psutil

from rbee.wire import Capabilities, Gpu

__all__ = ["NVIDIA_SMI_TIMEOUT_S", "gather", "nvidia_gpus", "parse_nvidia_smi"]

NVIDIA_SMI_TIMEOUT_S = 5.0
_QUERY = ["--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
_log = logging.getLogger(__name__)


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """GPUs from `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits`."""
    gpus = []
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 3:
            continue
        # A GPU name may itself hold commas: index is first, memory last, the name in between.
        index, memory, name = fields[0], fields[-1], ", ".join(fields[1:-1])
        try:
            gpus.append(Gpu(index=int(index), name=name, memory_total_mib=int(float(memory))))
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


def gather() -> Capabilities:
    """This machine's capabilities, read now."""
    memory = psutil.virtual_memory()
    gpus = nvidia_gpus()
    return Capabilities(
        hostname=socket.gethostname(),
        os=platform.system().lower(),
        arch=platform.machine(),
        cpu_count=os.cpu_count() or 1,
        ram_total_bytes=memory.total,
        ram_available_bytes=memory.available,
        gpus=gpus,
        backends=["cpu", "cuda"] if gpus else ["cpu"],
    )
