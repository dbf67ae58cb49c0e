"""Parsing nvidia-smi's CSV into GPUs, and the backends a machine offers."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.hive.capabilities import backends, parse_nvidia_smi
from rbee.wire import Gpu

FIXTURES = Path(__file__).parent / "nvidia_smi"


def _gpus(name: str) -> list[Gpu]:
    return parse_nvidia_smi((FIXTURES / name).read_text())


def test_output_read_on_a_real_h200_parses() -> None:
    # Read with the query the hive runs, on a lent NVIDIA H200 machine (2026-11-27).
    assert _gpus("h200.csv") == [
        Gpu(
            index=0,
            name="NVIDIA H200",
            memory_total_mib=143771,
            memory_free_mib=143156,
            driver="580.159.04",
        )
    ]


def test_two_gpus_keep_their_own_free_memory() -> None:
    gpus = _gpus("two_rtx4090.csv")
    assert [(g.index, g.memory_free_mib) for g in gpus] == [(0, 23877), (1, 1024)]
    assert {g.name for g in gpus} == {"NVIDIA GeForce RTX 4090"}


def test_eight_gpus_are_indexed_as_cuda_names_them() -> None:
    gpus = _gpus("eight_h100.csv")
    assert [g.index for g in gpus] == list(range(8))
    assert all(g.memory_total_mib == 81559 and g.driver == "580.159.04" for g in gpus)


def test_a_name_with_commas_and_junk_lines_are_handled() -> None:
    output = "0, Odd, Name, 1024, 1000, 550.1\n\nNo devices were found\nx, y, z\n"
    assert parse_nvidia_smi(output) == [
        Gpu(index=0, name="Odd, Name", memory_total_mib=1024, memory_free_mib=1000, driver="550.1")
    ]


@pytest.mark.parametrize(
    ("system", "machine", "gpus", "expected"),
    [
        ("linux", "x86_64", [], ["cpu"]),
        ("linux", "x86_64", ["h200.csv"], ["cpu", "cuda"]),
        ("darwin", "arm64", [], ["cpu", "metal"]),
        ("darwin", "x86_64", [], ["cpu"]),
    ],
)
def test_backends_follow_the_hardware(
    system: str, machine: str, gpus: list[str], expected: list[str]
) -> None:
    found = [gpu for name in gpus for gpu in _gpus(name)]
    assert backends(system, machine, found) == expected
