"""A SISA ensemble on disk: the aggregate checkpoint (the ensemble as one model, with a sidecar
holding the plan) and, in the ``sisa/`` folder beside it, the assignment of every training id
and one safetensors checkpoint per shard and slice. ``dormant train --sisa`` writes it,
``dormant store add`` reads it."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch

from dormant.errors import DormantError
from dormant.models import ModelSpec
from dormant.store.checkpoint import read_checkpoint, save_checkpoint
from dormant.store.files import atomic_write_bytes
from dormant.unlearn.sisa import Assignment, Plan, Sisa

FOLDER = "sisa"
ASSIGNMENT = "assignment.safetensors"


def shard_file(shard: int, slice_: int) -> str:
    return f"shard{shard}-slice{slice_}.safetensors"


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """A checkpoint's bytes: the same weights give the same bytes, so a shard nobody retrained
    hashes as it did."""
    return safetensors.torch.save({k: v.contiguous() for k, v in sorted(state.items())})


def assignment_bytes(a: Assignment) -> bytes:
    return safetensors.torch.save(a.tensors())


def read_assignment(path: Path, n: int | None = None) -> Assignment:
    state, _ = read_checkpoint(path)
    if set(state) != {"shard", "slice"} or state["shard"].shape != state["slice"].shape \
            or state["shard"].dim() != 1:
        raise DormantError(f"{path} is not a SISA assignment (tensors shard and slice, one "
                           "entry per training id)")
    if n is not None and len(state["shard"]) != n:
        raise DormantError(f"{path} assigns {len(state['shard'])} training ids, but the data "
                           f"has {n}; pass the --dataset and --train-size it was trained on")
    return Assignment(state["shard"].long(), state["slice"].long())


def save_sisa(checkpoint: Path, sisa: Sisa, ensemble: torch.nn.Module, spec: ModelSpec,
              meta: dict) -> Path:
    """Write the aggregate ``checkpoint`` (sidecar ``sisa``: the plan and ``meta['sisa']``)
    and its ``sisa/`` folder."""
    folder = Path(checkpoint).parent / FOLDER
    atomic_write_bytes(folder / ASSIGNMENT, assignment_bytes(sisa.assignment))
    for s, stages in enumerate(sisa.checkpoints):
        for r, state in enumerate(stages):
            atomic_write_bytes(folder / shard_file(s, r), state_bytes(state))
    side = {**meta, "sisa": {**meta.get("sisa", {}), "plan": sisa.plan.to_dict()}}
    return save_checkpoint(checkpoint, ensemble, spec, side)


def load_sisa(checkpoint: Path, side: dict) -> Sisa:
    """The ensemble whose aggregate is ``checkpoint`` (``side``: its sidecar), from the
    ``sisa/`` folder beside it; every shard and slice must be there."""
    folder = Path(checkpoint).parent / FOLDER
    try:
        plan = Plan.from_dict(side["sisa"]["plan"])
    except (KeyError, TypeError, DormantError) as e:
        raise DormantError(f"the sidecar of {checkpoint} has no usable SISA plan ({e}); write "
                           "it again with dormant train --sisa") from None
    if not (folder / ASSIGNMENT).is_file():
        raise DormantError(f"{checkpoint} is a SISA ensemble but {folder / ASSIGNMENT} is "
                           "missing; copy its sisa/ folder with it")
    assignment = read_assignment(folder / ASSIGNMENT)
    stages = []
    for s in range(plan.shards):
        row = []
        for r in range(plan.slices):
            path = folder / shard_file(s, r)
            if not path.is_file():
                raise DormantError(f"{checkpoint} is a SISA ensemble but {path} is missing; "
                                   "copy its whole sisa/ folder with it")
            row.append(read_checkpoint(path)[0])
        stages.append(tuple(row))
    return Sisa(plan, assignment, tuple(stages))

