"""``results.jsonl``: one JSON row per cell, every write atomic, readable while growing."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dormant.store.files import atomic_write_bytes


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_row(path: Path, row: dict) -> None:
    """Rewrite-and-rename, so a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    old = path.read_bytes() if path.is_file() else b""
    line = json.dumps({k: _clean(v) for k, v in row.items()}, sort_keys=False) + "\n"
    atomic_write_bytes(path, old + line.encode())


def read_rows(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
