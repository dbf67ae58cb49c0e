"""How fast does a hive fetch an hf:// model? rbee's download vs curl and hf_hub_download.

All three fetch the same file (the Gemma 3 270M GGUF, 253 MB) from the same local server
speaking the Hub's protocol (tests/fixtures/hub.py) into files on the same disk:

- rbee: `ArtifactCatalog.add("hf://…")` (huggingface_hub resolves, rbee's ranged download
  fetches, the sha256 is computed as the bytes arrive and checked, the file lands atomically)
- curl: `curl -sL -o FILE URL` of the resolve URL (follows the redirect; no checksum)
- huggingface_hub: `hf_hub_download` into a fresh cache (checks the sha256 too)

    python bench/hub_download.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rbee.catalog import ArtifactCatalog
from tests.fixtures.hub import fake_hub
from tests.fixtures.model import model_path

REPO = "ggml-org/gemma-3-270m-GGUF"
FILE = "gemma-3-270m-Q4_K_M.gguf"


def _timed(runs: int, fetch: Callable[[Path], None]) -> list[float]:
    seconds = []
    for _ in range(runs):
        scratch = Path(tempfile.mkdtemp(prefix="rbee-bench-"))
        try:
            started = time.perf_counter()
            fetch(scratch)
            seconds.append(time.perf_counter() - started)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    gguf = model_path()
    size = gguf.stat().st_size
    for hub in fake_hub():
        hub.add(REPO, FILE, gguf)
        os.environ["HF_ENDPOINT"] = hub.url
        url = f"{hub.url}/{REPO}/resolve/main/{FILE}"

        def rbee(scratch: Path) -> None:
            ArtifactCatalog(scratch).add("gemma", f"hf://{REPO}/{FILE}")

        def curl(scratch: Path, url: str = url) -> None:
            subprocess.run(["curl", "-sSfL", "-o", str(scratch / FILE), url], check=True)

        def hf_hub(scratch: Path, endpoint: str = hub.url) -> None:
            import huggingface_hub

            huggingface_hub.hf_hub_download(REPO, FILE, cache_dir=scratch, endpoint=endpoint)

        rows = [
            ("rbee (hf://, sha256 checked)", _timed(args.runs, rbee)),
            ("curl -L", _timed(args.runs, curl)),
            ("huggingface_hub.hf_hub_download", _timed(args.runs, hf_hub)),
        ]
    print(f"{size / 1e6:.0f} MB from a local Hub, {args.runs} runs each, median\n")
    print(f"{'client':<34} {'seconds':>8} {'MB/s':>8}")
    for name, seconds in rows:
        median = statistics.median(seconds)
        print(f"{name:<34} {median:>8.2f} {size / 1e6 / median:>8.0f}")


if __name__ == "__main__":
    main()
