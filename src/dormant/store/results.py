"""``results.jsonl``: one JSON row per cell, every write atomic, readable while growing."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dormant.errors import DormantError
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
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise DormantError(
                f"{path} line {number} is not a JSON row; fix or delete that line "
                "(the other rows are kept and a rerun redoes only missing cells)"
            ) from None
    return rows
