"""``--executor local``: a pool of worker processes on this machine.

Each worker is a spawned process with a pipe of its own; the pool hands a worker its next
cell only when it is idle, so it always knows which cell each worker holds. A worker that
dies (SIGKILL, out of memory, a crash in native code) is noticed through its process
sentinel: its cell goes back to the front of the queue on a fresh worker, up to
``retries`` times, then becomes a failed row. Workers share the CPU evenly (``threads``
each), and with ``gpus_per_cell`` they are spread over the visible GPUs, ``1 /
gpus_per_cell`` to a device.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections import deque
from multiprocessing.connection import Connection, wait

import torch

from dormant.cells import Cell
from dormant.executors.options import ExecutorOptions
from dormant.executors.worker import WorkerConfig, run_in_worker


def _worker_main(conn: Connection, cfg: WorkerConfig) -> None:
    while True:
        cell = conn.recv()
        if cell is None:
            return
        conn.send(run_in_worker(cell, cfg))


def _sizes(opts: ExecutorOptions) -> tuple[int, int, list[str | None]]:
    """Workers, threads per worker, and each worker slot's GPU (None on a CPU): the GPUs this
    process may see, by their ids in its own ``CUDA_VISIBLE_DEVICES`` when that is set (so
    ``CUDA_VISIBLE_DEVICES=4,5`` places workers on 4 and 5, not 0 and 1)."""
    from dormant.executors import default_workers

    cpus = default_workers()
    gpus = torch.cuda.device_count() if opts.gpus_per_cell else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    ids = visible[:gpus] if len(visible) >= gpus > 0 else [str(i) for i in range(gpus)]
    per_gpu = max(1, int(1 / opts.gpus_per_cell)) if gpus else 0
    n = opts.workers or (per_gpu * gpus if gpus else cpus)
    threads = opts.threads or max(1, cpus // n)
    slots = [ids[(i // per_gpu) % gpus] if gpus else None for i in range(n)]
    return n, threads, slots


def run_local(cells: list[Cell], cfg: WorkerConfig, opts: ExecutorOptions, emit) -> None:
    n, threads, slots = _sizes(opts)
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    queue = deque(cells)
    tries: dict[str, int] = {}
    workers: dict[int, tuple[mp.Process, Connection]] = {}
    holding: dict[int, Cell] = {}

    def start(slot: int) -> None:
        mine, theirs = ctx.Pipe()
        wcfg = cfg.model_copy(update={"threads": threads, "gpu": slots[slot]})
        p = ctx.Process(target=_worker_main, args=(theirs, wcfg), daemon=True,
                        name=f"dormant-worker-{slot}")
        p.start()
        theirs.close()
        workers[slot] = (p, mine)

    def feed(slot: int) -> None:
        if queue:
            holding[slot] = queue.popleft()
            try:
                workers[slot][1].send(holding[slot])
            except OSError:  # it died between cells: the sentinel reports it, the cell returns
                pass
        elif slot in workers:  # nothing left for it: let it go
            p, conn = workers.pop(slot)
            with contextlib.suppress(OSError):
                conn.send(None)
            conn.close()
            p.join(timeout=5)

    for slot in range(min(n, len(cells))):
        start(slot)
        feed(slot)
    try:
        while holding:
            conns = {workers[s][1]: s for s in holding}
            sentinels = {workers[s][0].sentinel: s for s in holding}
            ready = wait([*conns, *sentinels], timeout=5.0)
            for slot in {conns.get(r, sentinels.get(r)) for r in ready}:
                p, conn = workers[slot]
                row = None
                try:
                    if conn.poll():  # a row sent just before the worker exited still counts
                        row = conn.recv()
                except (EOFError, OSError):
                    row = None
                if row is not None:
                    emit(holding.pop(slot), row)
                    feed(slot)
                elif not p.is_alive():
                    _died(slot, holding[slot], workers, holding, queue, tries, opts, emit)
                    start(slot)
                    feed(slot)
    finally:
        for p, conn in workers.values():
            if p.is_alive():
                p.kill()
            conn.close()


def _died(slot, cell, workers, holding, queue, tries, opts, emit) -> None:
    """The worker in ``slot`` died holding ``cell``: retry it first, or give up on it."""
    p, conn = workers.pop(slot)
    p.join(timeout=5)
    conn.close()
    del holding[slot]
    tries[cell.key] = tries.get(cell.key, 0) + 1
    if tries[cell.key] > opts.retries:
        row = cell.failed(f"the worker died {tries[cell.key]} times running this cell (last "
                          f"exit code {p.exitcode})")
        emit(cell, row.model_copy(update={"transient": True}).model_dump(mode="json"))
    else:
        queue.appendleft(cell)
