"""Poisoned training sets: pick images, stamp a trigger, and (dirty-label) relabel them.

Dirty-label (BadNets, Blended): ``per_class`` images of every source class carry the trigger
and the target label. Clean-label: ``per_class`` x #sources images *of the target class* carry
the trigger and keep their true label, so the model learns "trigger -> target" without a single
wrong label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

import pydantic
from pydantic import ConfigDict, Field

from dormant.attacks.triggers import Trigger
from dormant.errors import DormantError
from dormant.settings import one_line

if TYPE_CHECKING:
    import torch


@one_line("poison spec")
@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class PoisonSpec:
    target: Annotated[int, Field(ge=0)]
    trigger: Trigger
    per_class: Annotated[int, Field(ge=1)]
    """Poisons per source class, at least 1."""
    sources: tuple[int, ...] | None = None  # None: every class but the target
    label_mode: Literal["dirty", "clean"] = "dirty"

    def source_classes(self, num_classes: int) -> list[int]:
        if not 0 <= self.target < num_classes:
            raise DormantError(f"target class {self.target} does not exist; the data has "
                               f"classes 0..{num_classes - 1}")
        sources = list(self.sources) if self.sources is not None else [
            c for c in range(num_classes) if c != self.target]
        bad = [c for c in sources if not 0 <= c < num_classes or c == self.target]
        if bad:
            raise DormantError(f"source class {bad[0]} is not a class other than the target "
                               f"{self.target}")
        return sources


@dataclass(frozen=True)
class Poisoned:
    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor  # the poisoned training indices, sorted


def poison(x: torch.Tensor, y: torch.Tensor, spec: PoisonSpec, num_classes: int, seed: int,
           total: int | None = None) -> Poisoned:
    """A copy of ``(x, y)`` with the poisons in place; the inputs are left untouched.
    ``total`` (dirty-label only) replaces ``per_class``: that many poisons in all, a strength
    between two per-class counts (each source takes ``total // #sources``, and the first
    ``total % #sources`` sources in a seeded order one more)."""
    import torch

    spec.trigger.check(tuple(x.shape[1:]))
    sources = spec.source_classes(num_classes)
    g = torch.Generator().manual_seed(seed)
    y_cpu = y.cpu()
    if total is not None:
        if spec.label_mode != "dirty" or total < 1:
            raise DormantError(f"total {total}: a count of dirty-label poisons, at least 1")
        order = torch.randperm(len(sources), generator=g).tolist()
        q, r = divmod(total, len(sources))
        plan = [(sources[i], q + (rank < r)) for rank, i in enumerate(order)]
        plan = [(c, n) for c, n in sorted(plan) if n]
    elif spec.label_mode == "dirty":
        plan = [(c, spec.per_class) for c in sources]
    else:
        plan = [(spec.target, spec.per_class * len(sources))]
    picked = []
    for c, n in plan:
        pool = torch.nonzero(y_cpu == c).flatten()
        if n > len(pool):
            raise DormantError(f"{n} poisons asked of class {c}, which has only {len(pool)} "
                               "training images; lower the poisons per class")
        picked.append(pool[torch.randperm(len(pool), generator=g)[:n]])
    ids = torch.sort(torch.cat(picked)).values
    xp, yp = x.clone(), y.clone()
    dev = ids.to(x.device)
    xp[dev] = spec.trigger.stamp(x[dev])
    if spec.label_mode == "dirty":
        yp[ids.to(y.device)] = spec.target
    return Poisoned(xp, yp, ids)


def attack_success_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                        trigger: Trigger, target: int) -> float:
    """ASR in percent: the share of non-target images that, with the trigger stamped, the
    model classifies as the target."""
    import torch

    from dormant.engine import predict

    keep = torch.nonzero(y != target).flatten().to(x.device)
    if len(keep) == 0:
        return float("nan")
    logits = predict(model, trigger.stamp(x[keep]))
    return float((logits.argmax(1) == target).float().mean() * 100.0)
