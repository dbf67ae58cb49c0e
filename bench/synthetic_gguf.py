"""Write a llama-architecture GGUF with random weights (see tests/fixtures/synthetic_gguf.py).

python bench/synthetic_gguf.py OUT.gguf [--layers 22 --embd 2048 --ff 5632 --vocab 32000]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.synthetic_gguf import main

if __name__ == "__main__":
    main()
