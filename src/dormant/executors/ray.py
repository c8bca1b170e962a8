"""``--executor ray``: every cell a Ray task, on a running cluster (``--ray-address auto`` or
an address) or on a local Ray started for this study.

Each task asks for one CPU, and ``gpus_per_cell`` of a GPU (0.25 packs four cells onto one
device). A task whose worker process dies is retried by Ray itself (``max_retries``); Ray
does not retry a cell that raised, because ``run_cell`` turns every error into a failed row.
Only the driver writes ``results.jsonl``. On a cluster, the cache and the output folder must
be on storage every node mounts at the same path (docs/scale-out.md).
"""

from __future__ import annotations

import os

from dormant.cells import Cell
from dormant.errors import DormantError
from dormant.executors.options import ExecutorOptions
from dormant.executors.worker import WorkerConfig, run_in_worker


def _ray():
    try:
        import ray
    except ImportError:
        raise DormantError("--executor ray needs Ray: pip install 'dormant[ray]'") from None
    return ray


def run_ray(cells: list[Cell], cfg: WorkerConfig, opts: ExecutorOptions, emit) -> None:
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        kwargs = {"address": opts.ray_address} if opts.ray_address else {
            "num_cpus": opts.workers or None, "include_dashboard": False}
        if not opts.ray_address:
            # Ray starts its workers at niceness 15; on a machine with any other load they
            # then get a sliver of the CPU (measured: 33 s against 1.6 s for the same steps)
            os.environ.setdefault("RAY_worker_niceness", "0")
            # Ray retries a task its memory monitor killed without limit by default
            os.environ.setdefault("RAY_task_oom_retries", str(opts.retries))
        ray.init(log_to_driver=False, configure_logging=False, **kwargs)
    threads = opts.threads or 1
    gpus = opts.gpus_per_cell
    if gpus is None and ray.cluster_resources().get("GPU", 0) > 0 and any(
            getattr(getattr(c, "spec", None), "device", "auto") != "cpu" for c in cells):
        gpus = 1.0  # a GPU cluster: one cell per GPU unless told to pack
    # a GPU task's process exits after its cell (max_calls=1): a reused process would keep
    # its first task's CUDA context and the cached tensors outside Ray's accounting
    task = ray.remote(num_cpus=1, num_gpus=gpus or 0, max_calls=1 if gpus else 0,
                      max_retries=opts.retries, retry_exceptions=False)(run_in_worker)
    wcfg = cfg.model_copy(update={"threads": threads})
    pending = list(cells)
    limit = opts.workers or len(cells)
    running: dict = {}
    try:
        while pending or running:
            while pending and len(running) < limit:
                cell = pending.pop(0)
                running[task.remote(cell, wcfg)] = cell
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                cell = running.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as e:  # retries spent: the worker kept dying
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    row = cell.failed(f"Ray gave up after {opts.retries} retries: {first}")
                    row = row.model_copy(update={"transient": True}).model_dump(mode="json")
                emit(cell, row)
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
