"""Run many `rbee` command lines in one process, for the bad-input sweep (test_sweep.py).

`python -m tests.config.cli_batch RUNS.json RESULTS.json`: RUNS holds a list of argument lists;
RESULTS gets, for each, the exit code, what went to stderr and the queen URLs it reached for.
Starting one Python for ~50 commands instead of one each keeps the sweep fast. The queen is
never reached: every way to it (reaching a running queen, starting a local one) begins with a
`QueenClient`, whose constructor is replaced by a recorder that refuses, so a file that got past
the loader shows up in `queen` instead of starting a queen process or waiting on the network.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import rbee.cli.main as cli
from rbee.clients import QueenClient


def main() -> None:
    runs_file, results_file = sys.argv[1:]
    reached: list[str] = []

    def no_queen(self: QueenClient, url: str, *args: Any, **kwargs: Any) -> None:
        reached.append(url)
        raise RuntimeError(f"reached for the queen at {url}")

    QueenClient.__init__ = no_queen  # type: ignore[method-assign]
    results = []
    for argv in json.loads(Path(runs_file).read_text()):
        reached.clear()
        stderr = io.StringIO()
        sys.argv = ["rbee", *argv]
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main()
                code: Any = 0
            except SystemExit as exc:
                code = exc.code
            except BaseException:
                traceback.print_exc()
                code = "raised"
        results.append(
            {"argv": argv, "code": code, "stderr": stderr.getvalue(), "queen": list(reached)}
        )
    Path(results_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
