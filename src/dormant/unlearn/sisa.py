"""SISA: Sharded, Isolated, Sliced, Aggregated training (Bourtoule et al., "Machine
Unlearning", IEEE S&P 2021), and exact deletion by retraining only what saw the ids.

The training set is split at random into S disjoint shards, each into R disjoint slices,
numbered from 0. Each shard trains its own model in R stages: stage r trains on slices 0..r,
starting from the checkpoint stage r-1 left, and a checkpoint is kept after every stage.
Deleting an id retrains its shard from the checkpoint before the slice that holds it (from a
fresh initialisation for slice 0); nothing else is touched.

Two choices the paper leaves open, stated so that a deletion is exact:

- Each stage is one run of the original's recipe (its optimiser and schedule) from a fresh
  optimiser, so a checkpoint's weights are all that stage r needs: retraining from it gives
  bit for bit what training without the deleted ids from scratch gives on the same device
  (tested on a CPU; GPU kernels need not be deterministic).
- Stage r runs ``epochs * 2 / (R + 1)`` passes over slices 0..r, where ``epochs`` is the
  monolithic recipe's passes over the training set: the paper's rule (section VI) under which
  a sliced shard costs what an unsliced one does. It is fixed when the ensemble is trained, so
  a deletion changes only the number of images, not the passes.

Every random choice comes from the seed: the assignment, each shard's initialisation, and
each stage's batch order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from dormant.engine.recipe import Recipe
from dormant.unlearn.base import PositiveInt, hyperparameters, register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dormant.engine import Progress
    from dormant.models.ensemble import Ensemble


@hyperparameters
class SisaHparams:
    """SISA training and exact deletion (Bourtoule et al., "Machine Unlearning", IEEE S&P
    2021). ``shards`` S and ``slices`` R: 5 and 4, the setting the issue measures on MNIST;
    the paper sweeps S from 1 to 20 and R from 1 to 20 (Figures 5-7), trading accuracy (fewer
    images per model) for cheaper deletions. ``aggregate``: ``mean`` of the shards' softmax
    outputs (default here: it is differentiable, so the relearning attack and Neural Cleanse
    get a gradient through the ensemble) or ``vote``, the paper's majority vote of labels."""

    shards: PositiveInt = 5
    slices: PositiveInt = 4
    aggregate: Literal["mean", "vote"] = "mean"


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(b"sisa/" + "/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:7], "little")


@dataclass(frozen=True)
class Assignment:
    """Per training id: its shard and slice, ``-1`` for an id no shard trains on (deleted, or
    never part of the training set)."""

    shard: torch.Tensor
    slice: torch.Tensor

    @classmethod
    def draw(cls, ids: torch.Tensor, n: int, shards: int, slices: int, seed: int) -> Assignment:
        """A seeded random split of ``ids`` into ``shards`` near-equal shards, each into
        ``slices`` near-equal slices."""
        import torch

        perm = ids.cpu()[torch.randperm(len(ids), generator=torch.Generator().manual_seed(
            _seed(seed, "assignment")))]
        shard = torch.full((n,), -1, dtype=torch.long)
        slc = torch.full((n,), -1, dtype=torch.long)
        for s, part in enumerate(torch.tensor_split(perm, shards)):
            shard[part] = s
            for r, piece in enumerate(torch.tensor_split(part, slices)):
                slc[piece] = r
        return cls(shard, slc)

    def ids(self, shard: int, upto: int) -> torch.Tensor:
        """The ids stage ``upto`` of ``shard`` trains on (slices 0..upto), in id order."""
        import torch

        return torch.nonzero((self.shard == shard) & (self.slice >= 0)
                             & (self.slice <= upto)).flatten()

    def trained(self) -> torch.Tensor:
        import torch

        return torch.nonzero(self.shard >= 0).flatten()

    def without(self, ids: torch.Tensor) -> Assignment:
        shard, slc = self.shard.clone(), self.slice.clone()
        shard[ids.cpu()] = -1
        slc[ids.cpu()] = -1
        return Assignment(shard, slc)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"shard": self.shard.contiguous(), "slice": self.slice.contiguous()}


@dataclass(frozen=True)
class Plan:
    """What fixes a SISA ensemble's training: its settings, the member architecture's recipe,
    the passes per stage and the seed."""

    shards: int
    slices: int
    aggregate: str
    recipe: Recipe
    epochs: float
    """The monolithic recipe's passes over the training set; stage r runs ``2 / (R + 1)`` of
    them over slices 0..r."""
    seed: int

    @classmethod
    def of(cls, hp: SisaHparams, recipe: Recipe, n_train: int, seed: int) -> Plan:
        steps = recipe.stop_after or recipe.steps
        return cls(hp.shards, hp.slices, hp.aggregate, recipe,
                   steps * recipe.batch_size / n_train, seed)

    def stage_steps(self, n_ids: int) -> int:
        if n_ids == 0:
            return 0
        per_stage = self.epochs * 2 / (self.slices + 1)
        return max(1, math.ceil(per_stage * n_ids / self.recipe.batch_size))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "recipe": self.recipe.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(**{**d, "recipe": Recipe(**d["recipe"])})


State = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class Sisa:
    """A trained SISA ensemble: its plan, assignment and, per shard, the state after each
    stage (``checkpoints[s][r]``, on the CPU)."""

    plan: Plan
    assignment: Assignment
    checkpoints: tuple[tuple[State, ...], ...]

    def ensemble(self, init: Callable[[int], nn.Module], device) -> Ensemble:
        from dormant.models.ensemble import Ensemble

        members = []
        for s in range(self.plan.shards):
            m = init(_seed(self.plan.seed, s))
            m.load_state_dict(self.checkpoints[s][-1])
            members.append(m.to(device))
        return Ensemble(members, self.plan.aggregate)


@dataclass(frozen=True)
class Retrained:
    """What a training or deletion ran: per shard, the first stage rerun (slices from 0), the
    seconds it took and the optimiser steps over every stage."""

    stages: dict[int, int]
    seconds: float
    steps: int


def _state(model: nn.Module) -> State:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _run(plan: Plan, x: torch.Tensor, y: torch.Tensor, assignment: Assignment,
         start: dict[int, int], base: tuple[tuple[State, ...], ...] | None,
         init: Callable[[int], nn.Module], progress: Progress | None, workers: int
         ) -> tuple[tuple[tuple[State, ...], ...], int]:
    """Train stages ``start[s]..R-1`` of every shard in ``start``; other shards keep ``base``'s
    checkpoints (the very same tensors). Returns the checkpoints and the steps run."""
    import torch

    from dormant.engine import fit

    steps = {(s, r): plan.stage_steps(len(assignment.ids(s, r)))
             for s, first in start.items() for r in range(first, plan.slices)}
    total = sum(steps.values())
    done = [0]
    lock = threading.Lock()

    def report(_label: str, step: int, _of: int) -> None:
        if progress is None:
            return
        with lock:  # shards in threads share one bar of the steps of every stage
            progress("sisa", min(total, done[0] + step), total)

    # built here, not in the threads: a seeded init sets torch's global generator
    models = {s: init(_seed(plan.seed, s)).to(x.device) for s in start}

    def shard(s: int) -> tuple[State, ...]:
        first, model = start[s], models[s]
        if first > 0:
            model.load_state_dict(base[s][first - 1])
        out = list(base[s][:first]) if base is not None else []
        for r in range(first, plan.slices):
            n = steps[(s, r)]
            if n:
                g = torch.Generator().manual_seed(_seed(plan.seed, s, r))
                fit(model, x, y, assignment.ids(s, r).to(x.device), plan.recipe.with_(steps=n),
                    generator=g, progress=report, label="sisa")
                with lock:
                    done[0] += n
            out.append(_state(model))
        return tuple(out)

    order = sorted(start)
    if workers > 1 and len(order) > 1:
        with ThreadPoolExecutor(min(workers, len(order))) as pool:
            trained = dict(zip(order, pool.map(shard, order), strict=True))
    else:
        trained = {s: shard(s) for s in order}
    ckpts = tuple(trained[s] if s in trained else base[s] for s in range(plan.shards))
    return ckpts, total


def side_by_side(device: torch.device, shards: int) -> int:
    """How many shards train at once: all of them on a GPU, one at a time on a CPU, whose cores
    already serve one shard's kernels."""
    import torch

    return shards if torch.device(device).type == "cuda" else 1


def train(plan: Plan, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
          init: Callable[[int], nn.Module], *, progress: Progress | None = None,
          workers: int = 1, assignment: Assignment | None = None) -> tuple[Sisa, Retrained]:
    """Train every shard of a SISA ensemble on ``ids`` of ``(x, y)`` from scratch.
    ``init(seed)`` builds a fresh member model; ``workers`` shards train at once (threads).
    ``assignment`` replaces the seeded draw (``ids`` is then unused): retraining an ensemble
    from scratch on what a deletion left is how exactness is checked."""
    if assignment is None:
        assignment = Assignment.draw(ids, len(y), plan.shards, plan.slices, plan.seed)
    t0 = time.perf_counter()
    ckpts, steps = _run(plan, x, y, assignment, dict.fromkeys(range(plan.shards), 0), None,
                        init, progress, workers)
    return Sisa(plan, assignment, ckpts), Retrained(dict.fromkeys(range(plan.shards), 0),
                                                    time.perf_counter() - t0, steps)


def forget(sisa: Sisa, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
           init: Callable[[int], nn.Module], *, progress: Progress | None = None,
           workers: int = 1) -> tuple[Sisa, Retrained]:
    """Delete ``ids`` exactly: each shard holding one of them is retrained from the checkpoint
    before the earliest slice holding one; every other checkpoint is kept as it is."""
    ids = ids.cpu()
    held = ids[sisa.assignment.shard[ids] >= 0]
    start: dict[int, int] = {}
    for s, r in zip(sisa.assignment.shard[held].tolist(), sisa.assignment.slice[held].tolist(),
                    strict=True):
        start[s] = min(r, start.get(s, r))
    after = sisa.assignment.without(ids)
    t0 = time.perf_counter()
    ckpts, steps = _run(sisa.plan, x, y, after, start, sisa.checkpoints, init, progress,
                        workers)
    return Sisa(sisa.plan, after, ckpts), Retrained(start, time.perf_counter() - t0, steps)


@register_method("sisa", SisaHparams)
def sisa(model, data, hp, ctx):
    """In a study, SISA trains its own ensemble on every training id with the original's
    recipe and then deletes the forget set exactly; ``model`` (the monolithic original) is
    not used, as in ``retrain``."""
    import torch

    plan = Plan.of(hp, ctx.recipe, len(data.y), ctx.seed)
    every = torch.cat([data.retain, data.forget]).sort().values
    trained, _ = train(plan, data.x, data.y, every, ctx.init, progress=ctx.progress)
    after, _ = forget(trained, data.x, data.y, data.forget, ctx.init, progress=ctx.progress)
    return after.ensemble(ctx.init, data.x.device)
