"""Parsing nvidia-smi's CSV into GPUs."""

from __future__ import annotations

from pathlib import Path

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


def test_output_captured_on_a_real_h200_parses() -> None:
    # Captured with the query the hive runs, on a lent NVIDIA H200 machine.
    output = (Path(__file__).parent / "nvidia_smi" / "h200.csv").read_text()
    assert parse_nvidia_smi(output) == [Gpu(index=0, name="NVIDIA H200", memory_total_mib=143771)]
