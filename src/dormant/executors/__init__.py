"""Executors: how a study's cells are run. ``execute(cells, log, ...)`` hands every cell not
yet in the results log to the chosen executor and appends each row as it comes back; only
this process writes ``results.jsonl``, so no row is ever written twice.

- ``serial``: in this process, one cell after another, with the engine's progress bars;
- ``local``: a pool of worker processes on this machine (``--workers N``), a dead worker's
  cell tried again on a fresh one;
- ``ray``: tasks on a Ray cluster (``pip install 'dormant[ray]'``), retried by Ray when a
  worker dies.

An executor is ``fn(cells, cfg, opts, emit)``, registered by name in ``EXECUTORS``; ``emit``
takes each finished row (a dict) and the cell it belongs to.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dormant import plugins
from dormant.cells import Cell, Workspace, run_cell
from dormant.errors import DormantError
from dormant.executors.options import ExecutorOptions
from dormant.executors.worker import WorkerConfig
from dormant.store import ResultsLog

if TYPE_CHECKING:
    from dormant.engine import Progress

Emit = Callable[[Cell, dict], None]
Executor = Callable[[list[Cell], WorkerConfig, ExecutorOptions, Emit, "Progress | None"], None]


def _serial(cells: list[Cell], cfg: WorkerConfig, opts: ExecutorOptions, emit: Emit,
            progress: Progress | None) -> None:
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    ws = Workspace(Path(cfg.cache_dir), Path(cfg.out), progress)
    for cell in cells:
        emit(cell, run_cell(cell, ws).model_dump(mode="json"))


def _local(cells, cfg, opts, emit, progress) -> None:
    from dormant.executors.local import run_local

    run_local(cells, cfg, opts, emit)


def _ray(cells, cfg, opts, emit, progress) -> None:
    from dormant.executors.ray import run_ray

    run_ray(cells, cfg, opts, emit)


EXECUTORS: dict[str, Executor] = {"serial": _serial, "local": _local, "ray": _ray}


def execute(cells: list[Cell], log: ResultsLog, cache_dir: Path, out: Path,
            opts: ExecutorOptions, progress: Progress | None = None) -> None:
    """Run every cell of ``cells`` that ``log`` does not hold yet (or holds as a transient
    failure); rows go to ``log``.
    ``progress`` gets ``("cells", done, total)`` after each row (and, serially, the engine's
    own step events)."""
    seen: set[str] = set()  # a grid axis given twice (seeds: [0, 0]) is one cell
    todo = [c for c in cells if not log.done(c.key) and not (c.key in seen or seen.add(c.key))]
    total, done = len(todo), 0
    if not todo:
        return
    if progress:
        progress("cells", 0, total)

    def emit(cell: Cell, row: dict) -> None:
        nonlocal done
        log.emit(row)
        done += 1
        if progress:
            progress("cells", done, total)

    if opts.executor == "local" and opts.gpus_per_cell is None and _wants_gpu(todo):
        # one cell per GPU unless told to pack: N CPU-count workers would all take cuda:0
        opts = opts.model_copy(update={"gpus_per_cell": 1.0})
    if opts.executor != "serial":
        _refuse_stranded(todo)
    cfg = WorkerConfig(cache_dir=str(Path(cache_dir).resolve()), out=str(Path(out).resolve()),
                       threads=opts.threads, plugins=plugins.requested())
    EXECUTORS[opts.executor](todo, cfg, opts, emit, progress)


def _refuse_stranded(cells: list[Cell]) -> None:
    """A component registered at run time is in this process only: a worker would run the
    built-in of its name, or nothing, under its cell key."""
    used: dict[str, set[str]] = {"methods": set(), "models": set(), "datasets": set()}
    for spec in {id(s): s for s in (getattr(c, "spec", None) for c in cells) if s}.values():
        for m in getattr(spec, "methods", ()):
            used["methods"] |= {m} if isinstance(m, str) else {m.method or m.name, m.then}
        used["models"].add(str(getattr(spec, "model", None)).split(":")[0])
        used["datasets"].add(str(getattr(spec, "dataset", "")).split(":")[0].lower())
    stranded = plugins.stranded(used)
    if stranded:
        raise DormantError(f"{stranded[0]} was registered at run time, in this process only, "
                           "so worker processes cannot run it; load its module with --plugin "
                           "(or the study key plugins:), or use --executor serial")


def _wants_gpu(cells: list[Cell]) -> bool:
    """Whether the cells will use a GPU here: one is visible and their device is not cpu."""
    import torch

    devices = {getattr(getattr(c, "spec", None), "device", "auto") for c in cells}
    return devices != {"cpu"} and torch.cuda.is_available()


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
