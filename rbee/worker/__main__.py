"""`python -m rbee.worker`: the same as `llm-worker-rbee`."""

from __future__ import annotations

from rbee.worker.server import main

main()
