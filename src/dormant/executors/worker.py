"""What runs on a worker, whatever the executor: one workspace per process, each cell's start
and end in the worker's own log (``OUT/workers/worker-HOST-PID.log``), and the engine's progress
written there too, since a worker has no terminal of its own."""

from __future__ import annotations

import functools
import os
import socket
import time
from pathlib import Path

from dormant import plugins
from dormant.cells import Cell, Workspace, run_cell
from dormant.settings import Settings


class WorkerConfig(Settings):
    """What every worker is told: where the cache and the output folder are (on a cluster,
    shared storage both), its torch thread count and, when packing, which GPU is its own."""

    cache_dir: str
    out: str
    threads: int | None = None
    gpu: str | None = None
    """The physical id (or MIG uuid) this worker's ``CUDA_VISIBLE_DEVICES`` is set to."""
    plugins: tuple[str, ...] = ()
    """The ``--plugin`` modules the driver loaded (``dormant.plugins``): a worker registers
    the same components before its first cell."""


def log_path(out: str | Path) -> Path:
    """This process's log; the host is in the name, since pids repeat across a cluster."""
    return Path(out) / "workers" / f"worker-{socket.gethostname()}-{os.getpid()}.log"


def _log(cfg: WorkerConfig, text: str) -> None:
    path = log_path(cfg.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        f.flush()


class LogProgress:
    """The engine's ``progress(label, done, total)`` as log lines: each task's start, every
    quarter and its end."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.quarter: dict[str, int] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        q = 4 * done // max(total, 1)
        if self.quarter.get(label) != q:
            self.quarter[label] = q
            _log(self.cfg, f"  {label}: {done}/{total}")
        if done >= total:
            self.quarter.pop(label, None)


@functools.cache
def workspace(cfg: WorkerConfig) -> Workspace:
    """This process's workspace: made on its first cell, kept for every later one."""
    import torch

    if cfg.gpu is not None:  # before CUDA starts in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = cfg.gpu
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    plugins.use(*cfg.plugins)
    _log(cfg, f"pid {os.getpid()} up, {torch.get_num_threads()} threads")
    return Workspace(Path(cfg.cache_dir), Path(cfg.out), LogProgress(cfg))


def run_in_worker(cell: Cell, cfg: WorkerConfig) -> dict:
    """Run one cell on this worker; its row as JSON-ready data."""
    ws = workspace(cfg)
    _log(cfg, f"pid {os.getpid()} start {cell.key} {cell.label}")
    t0 = time.perf_counter()
    row = run_cell(cell, ws)
    _log(cfg, f"pid {os.getpid()} done {cell.key} {row.status} {time.perf_counter() - t0:.1f} s")
    return row.model_dump(mode="json")
