"""``results.jsonl``: one JSON row per cell, appended (never rewritten), readable while growing.

Each row is one ``write`` of one line under an exclusive lock, so concurrent writers never
interleave. A writer killed mid-line leaves a torn last line: readers skip it, and the next
append cuts it off first. A damaged line anywhere else is the user's to look at, and is named.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from dormant.errors import DormantError
from dormant.store.cache import append_line


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def append_row(path: Path, row: dict | BaseModel) -> None:
    if isinstance(row, BaseModel):
        row = row.model_dump(mode="json", exclude_none=False)
    append_line(Path(path), json.dumps(_clean(row), sort_keys=False))


def read_rows(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: a torn last write
                break
            raise DormantError(
                f"{path} line {number} is not a JSON row; fix or delete that line "
                "(the other rows are kept and a rerun redoes only missing cells)"
            ) from None
    return rows


class ResultsLog:
    """A study's ``OUT/results.jsonl``: the rows already there by cell id, and ``emit`` to
    append one as a cell finishes, so a rerun skips what is done. A cell already logged is
    never written twice."""

    def __init__(self, out: Path, on_row: Callable[[dict], None] | None = None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "results.jsonl"
        self.rows = {r.get("cell"): r for r in read_rows(self.path)}
        self.on_row = on_row

    def __contains__(self, cell: str) -> bool:
        return cell in self.rows

    def emit(self, row: dict | BaseModel) -> None:
        data = row.model_dump(mode="json") if isinstance(row, BaseModel) else row
        if data["cell"] in self.rows:
            return
        append_row(self.path, data)
        self.rows[data["cell"]] = _clean(data)
        if self.on_row:
            self.on_row(self.rows[data["cell"]])

    def read(self) -> list[dict]:
        return read_rows(self.path)
