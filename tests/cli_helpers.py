"""What the request tests share: an ids file, and the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def write_ids(path: Path, ids) -> Path:
    """``ids`` as a text ids file, one per line."""
    path.write_text("\n".join(str(int(i)) for i in ids) + "\n")
    return path


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m dormant ARGS`` on one thread (a crash test kills it mid-way)."""
    return subprocess.run([sys.executable, "-m", "dormant", *args], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
