"""``results.jsonl``: one JSON row per cell, appended (never rewritten), readable while growing.

Each row is one ``write`` of one line under an exclusive lock, so concurrent writers never
interleave. A writer killed mid-line leaves a torn last line: readers skip it, and the next
append cuts it off first. A damaged line anywhere else is the user's to look at, and is named.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
from collections.abc import Callable, Iterator
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


def latest(rows: list[dict]) -> list[dict]:
    """One row per cell, the last written (a failed row retried later is replaced), in the
    order the cells first appeared."""
    by_cell: dict = {}
    for r in rows:
        by_cell[r.get("cell")] = r
    return list(by_cell.values())


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


def final(row: dict | None) -> bool:
    """Whether a cell with this row needs no more work: it has one, and it is not a
    transient failure (a worker that died, out of memory, an I/O error), which a rerun
    tries again."""
    return row is not None and not (row.get("status") == "failed" and row.get("transient"))


@contextlib.contextmanager
def driver_lock(out: Path) -> Iterator[None]:
    """Held by the one process that runs a study into ``out``: a second run into the same
    folder (the first one still alive, in a detached session, say) is refused instead of
    doing every remaining cell again beside it."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".driver.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            raise DormantError(f"{out} is being written by a running study ({who}); wait for "
                               "it to finish or give another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ResultsLog:
    """A study's ``OUT/results.jsonl``: the rows already there by cell id, and ``emit`` to
    append one as a cell finishes, so a rerun skips what is done. A cell that has a row is
    never written twice, unless that row is a transient failure being retried."""

    def __init__(self, out: Path, on_row: Callable[[dict], None] | None = None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "results.jsonl"
        self.rows = {r.get("cell"): r for r in read_rows(self.path)}
        self.on_row = on_row

    def done(self, cell: str) -> bool:
        return final(self.rows.get(cell))

    def __contains__(self, cell: str) -> bool:
        return cell in self.rows

    def emit(self, row: dict | BaseModel) -> None:
        data = row.model_dump(mode="json") if isinstance(row, BaseModel) else row
        if self.done(data["cell"]):
            return
        append_row(self.path, data)
        self.rows[data["cell"]] = _clean(data)
        if self.on_row:
            self.on_row(self.rows[data["cell"]])

    def read(self) -> list[dict]:
        return latest(read_rows(self.path))
