"""The unit of work of every study: a ``Cell``, and ``run_cell(cell, ws) -> Row``, the only
way work is done, in this process or on any worker.

A cell is a frozen, serialisable pydantic model: the study spec plus the coordinates of one
row. ``key`` is its content hash, the id of its row in ``results.jsonl``. Everything a cell
needs upstream (data, the original, the oracle, a calibration, an unlearned model) is built
through the content-addressed cache, once, whichever worker gets there first, so cells can
run in any order on any number of workers and give the same rows.

A ``Workspace`` is what a worker keeps between cells: the cache, the loaded datasets and the
prepared seeds (data on the device, original and oracle), so consecutive cells of one seed
do not reload them.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dormant.errors import DormantError
from dormant.rows import Row
from dormant.settings import Settings
from dormant.store import ModelCache
from dormant.store.cache import append_line

if TYPE_CHECKING:
    from dormant.engine import Progress


class Workspace:
    """A worker's cache handle and memo; ``progress`` receives the engine's step events."""

    def __init__(self, cache_dir: Path, out: Path, progress: Progress | None = None) -> None:
        self.cache = ModelCache(cache_dir)
        self.cache_dir = Path(cache_dir)
        self.out = Path(out)
        self.progress = progress
        self.memo: dict[tuple, Any] = {}

    def remember(self, key: tuple, make, keep: int = 3):
        """``make()`` once per key in this process, keeping at most ``keep`` entries of the
        key's kind (``key[0]``); the oldest goes first, and a seed's cells run together."""
        if key not in self.memo:
            same = [k for k in self.memo if k[0] == key[0]]
            for old in same[:max(0, len(same) - keep + 1)]:
                del self.memo[old]
            self.memo[key] = make()
        return self.memo[key]


class Cell(Settings):
    """One row's worth of work. Subclasses add their coordinates and implement ``run``."""

    key: str
    """Content hash of the study spec and the coordinates: the row's ``cell`` id."""

    def run(self, ws: Workspace) -> Row:
        raise NotImplementedError

    def failed(self, error: str) -> Row:
        """The failed row of this cell, with its coordinates and one line of ``error``."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        """A short description for logs and progress lines."""
        return self.key


def run_cell(cell: Cell, ws: Workspace) -> Row:
    """Run ``cell``; any failure becomes its failed row (status ``failed``, ``error``) and
    the study goes on. The traceback goes to ``OUT/workers/errors.log`` for whoever debugs."""
    t0 = time.perf_counter()
    try:
        return cell.run(ws)
    except Exception as e:  # noqa: BLE001 - every failure must become a row, never a lost cell
        append_line(ws.out / "workers" / "errors.log",
                    f"--- cell {cell.key} ({cell.label}) on {socket.gethostname()} pid "
                    f"{os.getpid()}\n{traceback.format_exc()}")
        first = (str(e).splitlines() or [""])[0]
        row = cell.failed(f"{type(e).__name__}: {first}" if first else type(e).__name__)
        return row.model_copy(update={"seconds": round(time.perf_counter() - t0, 3),
                                      "transient": _transient(e)})


def _transient(e: Exception) -> bool:
    """Out of memory (CUDA's included) and I/O errors may not happen again on a rerun."""
    from dormant.engine import Diverged

    if isinstance(e, Diverged | DormantError):
        return False
    text = str(e).lower()
    return isinstance(e, MemoryError | OSError) or "out of memory" in text
