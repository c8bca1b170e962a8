"""The clean-unlearning backdoor (the threat of Arazzi, Nocera, P. 2025, arXiv 2506.12522).

The attacker contributes a share of the training set. Inside it, a few images of several
source classes carry a weak trigger and the target label: a *weak, distributed* backdoor.
Later the attacker asks for some of their *clean* images to be deleted: no trigger, true
labels. This module builds both halves and the controls that make the effect measurable.

The request is the *counterweight* of ``DESIGN.md``: clean non-target images of the
contribution that a surrogate model, trained by the attacker with the poisons, already finds
closest to the target (highest target margin). While they are trained on with their true
labels they teach "looks like the target, is not the target", which holds the weak backdoor
down; deleting them removes the counterweight, and approximate unlearning pushes away from
their labels on top.

Controls:
- a random clean, non-target subset of the same contribution, of the same size
  (``random_request``); the study unlearns it until its accuracy drops as much as the attack
  request's did (strength matching);
- the same request on a model trained without poisons (the study's ``unpoisoned``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pydantic
import torch
from pydantic import ConfigDict, Field, field_validator
from torch import nn

from dormant.attacks.poison import Poisoned, PoisonSpec, poison
from dormant.engine import predict
from dormant.errors import DormantError
from dormant.settings import one_line

STRATEGIES = ("margin", "stamped-margin", "random")


@one_line("clean-unlearning attack")
@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class CleanUnlearningSpec:
    """The attack's knobs. Defaults are the setting measured to work best on MNIST
    (see the backdoor study's report); ``contribution`` is the attacker's share of the
    training set, poisons included, and ``request`` the size of the clean deletion request.

    ``strategy``: ``margin`` ranks clean images by the surrogate's target margin
    (target logit minus the best other logit), ``stamped-margin`` by that margin with the
    trigger stamped on, ``random`` picks at random (the unranked control)."""

    poison: PoisonSpec
    contribution: float = Field(0.2, gt=0.0, le=1.0)
    """The attacker's share of the training set, in (0, 1]."""
    request: int = Field(300, ge=1)
    """Images in the deletion request, at least 1."""
    strategy: str = "margin"

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown request strategy {v!r}; use {', '.join(STRATEGIES)}")
        return v


@dataclass(frozen=True)
class Planted:
    """The victim's training set with the attacker's contribution in it."""

    x: torch.Tensor
    y: torch.Tensor
    poisons: torch.Tensor  # training ids that carry the trigger
    contribution: torch.Tensor  # the attacker's ids, poisons included, sorted
    clean_pool: torch.Tensor  # contributed ids a clean request may draw on: clean, non-target


def plant(x: torch.Tensor, y: torch.Tensor, spec: CleanUnlearningSpec, num_classes: int,
          seed: int) -> Planted:
    """Pick the attacker's contribution (a seeded share of the training ids), poison
    ``spec.poison.per_class`` images per source class inside it, and return the training set
    as the victim sees it. The inputs are left untouched."""
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    contribution = torch.randperm(n, generator=g)[: max(1, round(spec.contribution * n))]
    contribution = contribution.sort().values
    inside = torch.zeros(n, dtype=torch.bool)
    inside[contribution] = True
    # poison only inside the contribution: the other images are not the attacker's to touch
    sub = contribution.to(y.device)
    counts = torch.bincount(y.cpu()[contribution], minlength=num_classes)
    for c in spec.poison.source_classes(num_classes):
        if counts[c] < spec.poison.per_class:
            raise DormantError(f"{spec.poison.per_class} poisons per class asked, but the "
                               f"attacker's contribution holds only {int(counts[c])} images "
                               f"of class {c}; lower the poisons or raise the contribution")
    p: Poisoned = poison(x[sub], y[sub], spec.poison, num_classes, seed)
    poisons = contribution[p.ids.cpu()]
    xp, yp = x.clone(), y.clone()
    xp[sub], yp[sub] = p.x, p.y
    y_true = y.cpu()
    clean = inside.clone()
    clean[poisons] = False
    clean &= y_true != spec.poison.target
    pool = torch.nonzero(clean).flatten()
    if spec.request > len(pool):
        raise DormantError(f"a request of {spec.request} clean images asked of a contribution "
                           f"with only {len(pool)} clean non-target images; lower the request "
                           "or raise the contribution")
    return Planted(xp, yp, poisons, contribution, pool)


def target_margin(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Per image: the target logit minus the largest other logit (positive = sent to the
    target)."""
    logits = predict(model, x).float()
    others = logits.clone()
    others[:, target] = float("-inf")
    return (logits[:, target] - others.max(1).values).cpu()


def select_request(surrogate: nn.Module, planted: Planted, spec: CleanUnlearningSpec,
                   seed: int) -> torch.Tensor:
    """The attack's clean deletion request: ``spec.request`` ids of ``planted.clean_pool``,
    ranked by ``spec.strategy`` in the attacker's surrogate. Sorted ids."""
    pool = planted.clean_pool
    if spec.strategy == "random":
        return random_request(planted, spec.request, seed)
    x = planted.x[pool.to(planted.x.device)]
    if spec.strategy == "stamped-margin":
        x = spec.poison.trigger.stamp(x)
    score = target_margin(surrogate, x, spec.poison.target)
    top = torch.topk(score, spec.request).indices
    return pool[top].sort().values


def random_request(planted: Planted, size: int, seed: int,
                   exclude: torch.Tensor | None = None) -> torch.Tensor:
    """A seeded random clean request of ``size`` ids from the same clean pool (the control),
    avoiding ``exclude`` where the pool allows."""
    pool = planted.clean_pool
    if exclude is not None and len(pool) - len(exclude) >= size:
        pool = pool[~torch.isin(pool, exclude.cpu())]
    g = torch.Generator().manual_seed(seed + 7919)
    return pool[torch.randperm(len(pool), generator=g)[:size]].sort().values


def is_clean(request: torch.Tensor, planted: Planted, x_true: torch.Tensor,
             y_true: torch.Tensor, target: int) -> bool:
    """The request's images are the untouched originals with their true labels, none of them
    is a poison or of the target class."""
    ids = request.to(x_true.device)
    return bool(
        torch.equal(planted.x[ids], x_true[ids])
        and torch.equal(planted.y[ids.to(planted.y.device)], y_true[ids.to(y_true.device)])
        and not torch.isin(request.cpu(), planted.poisons).any()
        and not (y_true[ids.to(y_true.device)] == target).any()
    )
