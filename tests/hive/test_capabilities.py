"""Parsing nvidia-smi's CSV into GPUs."""

from __future__ import annotations

from rbee.hive.capabilities import parse_nvidia_smi
from rbee.wire import Gpu


def test_nvidia_smi_csv_becomes_gpus() -> None:
    output = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA GeForce RTX 4090, 24564\n"
    assert parse_nvidia_smi(output) == [
        Gpu(index=0, name="NVIDIA H100 80GB HBM3", memory_total_mib=81559),
        Gpu(index=1, name="NVIDIA GeForce RTX 4090", memory_total_mib=24564),
    ]


def test_a_name_with_commas_and_junk_lines_are_handled() -> None:
    output = "0, Odd, Name, 1024\n\nNo devices were found\nx, y, z\n"
    assert parse_nvidia_smi(output) == [Gpu(index=0, name="Odd, Name", memory_total_mib=1024)]
