"""How a study's cells are run: where, on how many workers, with how much of a GPU each."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dormant.settings import Settings


class ExecutorOptions(Settings):
    """``serial`` runs every cell in this process; ``local`` on a pool of ``workers``
    processes on this machine; ``ray`` on a Ray cluster (``ray_address``: ``auto`` joins a
    running one, none starts a local one). None of these changes a row: they are not part
    of any cell's key."""

    executor: Literal["serial", "local", "ray"] = "serial"
    workers: int | None = Field(default=None, ge=1)
    """``local``: processes (default: the CPU count); ``ray``: cells in flight at once
    (default: as many as the cluster's resources admit)."""
    ray_address: str | None = None
    gpus_per_cell: float | None = Field(default=None, gt=0)
    """A fraction packs cells onto one GPU: 0.25 runs four small-model cells per device."""
    retries: int = Field(default=3, ge=0)
    """Times a cell whose worker died is tried again before it becomes a failed row."""
    threads: int | None = Field(default=None, ge=1)
    """Torch CPU threads per cell (default: serial, torch's own, usually the CPU count;
    ``local``, the CPU count divided among the workers; ``ray``, 1). Rows are identical
    across executors at equal threads; on a CPU the thread count changes the order of float
    reductions, and so the last digits of a trained model's numbers."""


def ignored(opts: ExecutorOptions, cuda: bool) -> list[str]:
    """One line per option that ``opts.executor`` (or this machine, without ``cuda``) would
    silently ignore, naming the option and what would use it."""
    out = []
    if opts.workers is not None and opts.executor == "serial":
        out.append("--workers is ignored by the serial executor (one cell at a time in this "
                   "process); add --executor local or ray to use it")
    if opts.ray_address is not None and opts.executor != "ray":
        out.append(f"--ray-address is ignored by the {opts.executor} executor; add "
                   "--executor ray to join that cluster")
    if opts.gpus_per_cell is not None and (opts.executor == "serial" or not cuda):
        why = "the serial executor runs one cell at a time" if opts.executor == "serial" \
            else "no CUDA GPU is visible here"
        out.append(f"--gpus-per-cell is ignored: {why}")
    return out
