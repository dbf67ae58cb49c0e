"""bench/plan_scale.py in its --quick form: it runs, and each row is a real, finished plan.

The figures themselves are the benchmark's to report (bench/RESULTS.md), never asserted here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

_ROW = re.compile(
    r"^(?P<what>.+?)\s+(?P<median>\d+\.\d\d) \((?P<low>\d+\.\d\d)-(?P<high>\d+\.\d\d)\)$"
)


def test_the_quick_scale_bench_prints_a_row_per_measurement() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "plan_scale.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {m["what"]: m for line in done.stdout.splitlines() if (m := _ROW.match(line.strip()))}
    assert set(rows) == {
        "rbee --help",
        "rbee validate (demo YAML)",
        "rbee plan, 10 simulated hives (farm)",
    }
    for row in rows.values():
        assert 0 < float(row["low"]) <= float(row["median"]) <= float(row["high"])
