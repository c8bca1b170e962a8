"""The one training loop. Training, every unlearning method and every attack step through it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dormant.engine.augment import augment
from dormant.engine.device import autocast, prepare_model, to_float
from dormant.engine.evaluation import evaluate
from dormant.engine.recipe import Recipe

Progress = Callable[[str, int, int], None]
"""``progress(task, done, total)``: how loops report; the CLI turns it into rich bars."""
Hook = Callable[[int, nn.Module], bool | None]
"""``hook(steps_done, model)``: called every ``hook_every`` steps; returning True stops."""
FINITE_CHECK_EVERY = 25  # a finiteness check syncs the GPU; every step would stall it


class Diverged(RuntimeError):
    """The loss stopped being finite (gradient ascent can do this). Studies record the cell
    as failed with this message and go on."""


class BatchStream:
    """Endless seeded batches of ids: each pass over the pool is a fresh permutation."""

    def __init__(self, ids: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
        if len(ids) == 0:
            raise ValueError("cannot draw batches from an empty id set")
        self.ids = ids
        self.batch_size = min(batch_size, len(ids))
        self.generator = generator
        self._order = ids[:0]

    def __call__(self) -> torch.Tensor:
        if len(self._order) < self.batch_size:
            perm = torch.randperm(len(self.ids), generator=self.generator).to(self.ids.device)
            self._order = torch.cat([self._order, self.ids[perm]])
        batch, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return batch


def forward(
    model: nn.Module, x: torch.Tensor, ids: torch.Tensor, recipe: Recipe, generator: torch.Generator
) -> torch.Tensor:
    """Logits of an augmented batch ``x[ids]`` (x is the uint8 tensor on the device)."""
    return model(augment(to_float(x[ids]), recipe.augment, recipe.pad, generator))


def train_loop(
    model: nn.Module,
    recipe: Recipe,
    loss_fn: Callable[[int], torch.Tensor],
    *,
    params=None,
    hook: Hook | None = None,
    hook_every: int = 1,
    progress: Progress | None = None,
    label: str = "train",
) -> int:
    """Run ``recipe.steps`` optimiser steps on ``loss_fn(step)``; returns the steps taken."""
    device = next(model.parameters()).device
    opt, sched = recipe.build(list(model.parameters()) if params is None else params)
    model.train()
    total = recipe.stop_after or recipe.steps
    report_every = max(1, total // 100)
    for step in range(total):
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            loss = loss_fn(step)
        done = step + 1
        if (done % FINITE_CHECK_EVERY == 0 or done == total) and not torch.isfinite(loss):
            raise Diverged(f"{label}: the loss became {loss.item()} at step {done}")
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (done % report_every == 0 or done == total):
            progress(label, done, total)
        if hook is not None and done % hook_every == 0 and hook(done, model):
            if progress is not None:
                progress(label, total, total)
            return done
    return total


@dataclass(frozen=True)
class FitResult:
    steps: int
    seconds: float
    learning_speed: torch.Tensor | None
    """Per training index: the share of its mini-batch appearances classified correctly
    (Jiang et al.'s learning-speed proxy for the C-score); NaN where never drawn."""


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: torch.Tensor,
    recipe: Recipe,
    *,
    generator: torch.Generator,
    track: bool = False,
    hook: Hook | None = None,
    hook_every: int = 1,
    progress: Progress | None = None,
    label: str = "train",
    until_fit: float | None = None,
) -> FitResult:
    """Cross-entropy training of ``model`` on ``(x[ids], y[ids])``; ``track`` records
    per-sample correctness as the batches go by, which costs nothing extra. ``until_fit``
    stops once the model fits that percentage of ``x[ids]`` (un-augmented), checked once per
    epoch: a memorising recipe on any dataset, with ``recipe.steps`` as the cap."""
    prepare_model(model, x.device)
    stream = BatchStream(ids.to(x.device), recipe.batch_size, generator)
    seen = torch.zeros(len(x), device=x.device) if track else None
    right = torch.zeros(len(x), device=x.device) if track else None

    def loss_fn(_step: int) -> torch.Tensor:
        b = stream()
        logits = forward(model, x, b, recipe, generator)
        if track:
            seen.index_add_(0, b, torch.ones(len(b), device=x.device))
            right.index_add_(0, b, (logits.argmax(1) == y[b]).float())
        return F.cross_entropy(logits, y[b])

    if until_fit is not None:
        if hook is not None:
            raise ValueError("fit: until_fit and hook are exclusive")
        hook_every = max(1, math.ceil(len(ids) / recipe.batch_size))

        def hook(_step: int, m: nn.Module) -> bool:
            return evaluate(m, x, y, ids).acc >= until_fit

    t0 = time.perf_counter()
    steps = train_loop(
        model, recipe, loss_fn, hook=hook, hook_every=hook_every, progress=progress, label=label
    )
    speed = (right / seen).cpu() if track else None
    return FitResult(steps, time.perf_counter() - t0, speed)
