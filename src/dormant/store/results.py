"""``results.jsonl``: one JSON row per cell, every write atomic, readable while growing."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
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


class ResultsLog:
    """A study's ``OUT/results.jsonl``: the rows already there by cell id, and ``emit`` to
    append one as a cell finishes, so a rerun skips what is done."""

    def __init__(self, out: Path, on_row: Callable[[dict], None] | None = None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "results.jsonl"
        self.rows = {r.get("cell"): r for r in read_rows(self.path)}
        self.on_row = on_row

    def __contains__(self, cell: str) -> bool:
        return cell in self.rows

    def emit(self, row: dict) -> None:
        append_row(self.path, row)
        self.rows[row["cell"]] = row
        if self.on_row:
            self.on_row(row)

    def read(self) -> list[dict]:
        return read_rows(self.path)
