"""Many small models trained in one pass: a group of same-architecture models, each on its own
ids, as one batched model (``torch.func``: ``stack_module_state``, ``functional_call`` and
``vmap``). Shadow models for membership inference are the case it is for: 16 or 64 copies of a
small model, each on its own half of a pool, where training them one after another spends most
of its time in per-step overhead rather than arithmetic.

Each model of the group trains exactly as :func:`dormant.engine.fit` would train it alone: the
same batches and augmentation (each model draws from its own generator, in the same order),
the same optimiser steps (Adam, AdamW and SGD act element by element, so one optimiser over
the stacked parameters is one per model; it runs fused where torch has the kernel, because
stacked parameters no longer fit in cache for a per-tensor update), and BatchNorm's running
statistics kept per model (the buffers are stacked too, and updated in place under
``vmap``). Only float summation order differs; ``tests/test_group.py`` bounds the difference
for an MLP and a BatchNorm CNN.

A model with an operation ``vmap`` has no batching rule for, or whose batched step is slower
than its models' steps one by one (on a CPU, ``vmap`` makes convolutions grouped ones, which
``benchmarks/shadows.py`` measured 3.6x slower for ``cnn-small``), is trained one model at a
time, with one warning saying so."""

from __future__ import annotations

import copy
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from dormant.engine.augment import apply_moves, draw_moves
from dormant.engine.device import autocast, prepare_model, to_float
from dormant.engine.loop import FINITE_CHECK_EVERY, BatchStream, Diverged, FitResult, Progress, fit
from dormant.engine.recipe import Recipe


def _batched(model: nn.Module):
    base = copy.deepcopy(model).to("meta")
    base.train()

    def one(params, buffers, xb):
        return functional_call(base, (params, buffers), (xb,))

    return vmap(one, in_dims=(0, 0, 0))


def groupable(models: list[nn.Module], x: torch.Tensor, recipe: Recipe, *,
              timed: bool = True) -> str | None:
    """None when ``models`` can train as one batched model and it pays, else why not (one
    line). Training steps on copies of their state, drawing no random numbers: one proves
    vmap batches every operation, and a timed pair of each kind compares a batched step with
    one step of each model alone (on a CPU, vmap turns convolutions into grouped
    ones, which can be slower than the models one by one)."""
    if len({type(m) for m in models}) != 1:
        return "the models are not of one architecture"
    shapes = [[(k, tuple(v.shape)) for k, v in m.state_dict().items()] for m in models]
    if any(s != shapes[0] for s in shapes):
        return "the models' parameter shapes differ"
    params, buffers = stack_module_state(models)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.clone() for k, v in buffers.items()}
    b = min(recipe.batch_size, len(x))
    probe = to_float(x[:b])
    stacked = probe.expand(len(models), *probe.shape).contiguous()
    forward = _batched(models[0])
    try:
        forward(params, buffers, stacked).sum().backward()
    except (RuntimeError, NotImplementedError) as e:
        return f"vmap cannot batch it ({' '.join(str(e).split())[:160]})"
    if not timed:
        return None
    one = copy.deepcopy(models[0]).train()
    one_opt, _ = recipe.build(one.parameters())
    group_opt, _ = recipe.build(list(params.values()), fused=True)

    def alone() -> None:  # a whole step: the optimiser's per-model overhead counts too
        for _ in models:
            one_opt.zero_grad(set_to_none=True)
            one(probe).sum().backward()
            one_opt.step()

    def batched() -> None:
        group_opt.zero_grad(set_to_none=True)
        forward(params, buffers, stacked).sum().backward()
        group_opt.step()

    t_alone, t_group = _best(alone, x.device), _best(batched, x.device)
    if t_group > 0.8 * t_alone:
        return (f"a batched step takes {1000 * t_group:.0f} ms against {1000 * t_alone:.0f} "
                f"ms for the {len(models)} models one by one here")
    return None


def _best(step, device: torch.device, reps: int = 2) -> float:
    out = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":  # time the work, not the kernel launches
            torch.cuda.synchronize(device)
        out = min(out, time.perf_counter() - t0)
    return out


FLOAT_COPY_BYTES = 1 << 30
"""The most memory the group's images may take as floats, converted once: G models' batches
cost G gathers and conversions of uint8 images per step, which for a small model took about
as long as the step's arithmetic (MNIST MLP, 16 models, 2 CPU cores)."""


def _floats(x: torch.Tensor, ids: list[torch.Tensor]
            ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Every image any model trains on, as floats once (the same values ``to_float`` gives a
    batch), and where each id sits in them; ``(None, None)`` over
    :data:`FLOAT_COPY_BYTES`."""
    union = torch.unique(torch.cat([i.to(x.device) for i in ids]))
    if union.numel() * x[0].numel() * 4 > FLOAT_COPY_BYTES:
        return None, None
    local = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    local[union] = torch.arange(len(union), device=x.device)
    # one row per image, in the layout to_float gives a batch: a row gather is a memcpy
    floats = to_float(x[union])
    rows = floats.permute(0, 2, 3, 1) if x.dim() == 4 else floats
    return rows.contiguous().view(len(union), -1), local


def _rows(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Gathered rows of :func:`_floats` as the (B, C, H, W) channels-last batch they were."""
    if len(shape) != 3:
        return rows.view(len(rows), *shape)
    c, h, w = shape
    return rows.view(len(rows), h, w, c).permute(0, 3, 1, 2)


def fit_group(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor,
              ids: list[torch.Tensor], recipe: Recipe, *, generators: list[torch.Generator],
              progress: Progress | None = None, label: str = "train group",
              batched: bool | None = None) -> list[FitResult]:
    """Train ``models[g]`` on ``(x[ids[g]], y[ids[g]])`` with ``generators[g]``, for every g
    at once; each ends as :func:`fit` with the same arguments would leave it. Every model
    needs the same batch size (each id set at least ``recipe.batch_size`` long, or all of
    one length). ``batched``: None batches where it is possible and faster; True wherever it
    is possible (the equivalence tests)."""
    if not (len(models) == len(ids) == len(generators)) or not models:
        raise ValueError("fit_group: one id set and one generator per model")
    for m in models:
        prepare_model(m, x.device)
    sizes = {min(recipe.batch_size, len(i)) for i in ids}
    why = "the id sets give different batch sizes" if len(sizes) > 1 else None
    why = why or (None if len(models) > 1 else "a group of one")
    why = why or (None if batched is not False else "asked to")
    why = why or groupable(models, x, recipe, timed=batched is None)
    if why is not None:
        if len(models) > 1 and batched is not False:
            warnings.warn(f"{label}: training {len(models)} models one at a time: {why}",
                          stacklevel=2)
        return [fit(m, x, y, i, recipe, generator=g, progress=progress, label=label)
                for m, i, g in zip(models, ids, generators, strict=True)]
    t0 = time.perf_counter()
    streams = [BatchStream(i.to(x.device), recipe.batch_size, g)
               for i, g in zip(ids, generators, strict=True)]
    floats, local = _floats(x, ids)
    params, buffers = stack_module_state(models)
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    forward = _batched(models[0])
    opt, sched = recipe.build(list(params.values()), fused=True)
    total = recipe.stop_after or recipe.steps
    report_every = max(1, total // 100)
    n = len(models)
    for step in range(total):
        opt.zero_grad(set_to_none=True)
        idx = torch.stack([s() for s in streams])  # (models, batch)
        xs = (to_float(x[idx.flatten()]) if floats is None else
              _rows(floats.index_select(0, local[idx.flatten()]), x.shape[1:]))
        if recipe.augment != "none" and len(xs):
            # each model draws its moves from its own generator, in fit's order; one gather
            moves = [draw_moves(recipe.augment, recipe.pad, idx.shape[1], g) for g in generators]
            xs = apply_moves(xs, tuple(None if parts[0] is None else torch.cat(parts, -1)
                                       for parts in zip(*moves, strict=True)), recipe.pad)
        xs = xs.contiguous().view(n, idx.shape[1], *x.shape[1:])
        ys = y[idx]
        with autocast(x.device):  # as train_loop: bf16 on CUDA, exact elsewhere
            logits = forward(params, buffers, xs)
            losses = F.cross_entropy(logits.flatten(0, 1), ys.flatten(),
                                     reduction="none").view(n, -1).mean(1)
        done = step + 1
        if (done % FINITE_CHECK_EVERY == 0 or done == total) and \
                not bool(torch.isfinite(losses).all()):
            bad = int((~torch.isfinite(losses)).nonzero()[0])
            raise Diverged(f"{label}: model {bad}'s loss became {losses[bad].item()} at step "
                           f"{done}")
        losses.sum().backward()  # independent models: each gets its own loss's gradient
        opt.step()
        sched.step()
        if progress is not None and (done % report_every == 0 or done == total):
            progress(label, done, total)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        for g, m in enumerate(models):
            state = {k: v[g] for k, v in {**params, **buffers}.items()}
            m.load_state_dict(state, strict=True)
    return [FitResult(total, seconds / n, None) for _ in models]
