"""The relearning attack: fine-tune an unlearned model on retained data (plus k leaked forget
examples) and watch whether held-out forget accuracy comes back (Siddiqui et al. 2025)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from dormant.engine import Progress, Recipe, evaluate, fit
from dormant.errors import DormantError


@dataclass(frozen=True)
class RelearnConfig:
    """Seed-paper defaults: a fresh Adam, lr 1e-5 with cosine decay to 1e-6, wd 0, batch 128,
    3,910 steps (10 epochs of the CIFAR-10 loader, the grid mode); held-out forget accuracy
    every 10 steps. The test set is evaluated only every ``test_every`` steps: it is the
    expensive part and the curve does not need it densely."""

    k: int = 0
    steps: int = 3_910
    lr: float = 1e-5
    final_lr: float = 1e-6
    batch_size: int = 128
    weight_decay: float = 0.0
    eval_every: int = 10
    test_every: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "test_every", "batch_size"):
            if getattr(self, name) <= 0:
                raise DormantError(f"relearning attack: {name} must be positive")
        if self.k < 0:
            raise DormantError("relearning attack: k must be >= 0")

    def recipe(self, base: Recipe) -> Recipe:
        return Recipe(
            steps=self.steps, lr=self.lr, final_lr=self.final_lr, batch_size=self.batch_size,
            weight_decay=self.weight_decay, optimizer="adam", schedule="cosine",
            augment=base.augment, pad=base.pad,
        )


@dataclass(frozen=True)
class RelearnData:
    x: torch.Tensor
    y: torch.Tensor
    retain: torch.Tensor
    leaked: torch.Tensor  # the first k of the leakable forget examples
    heldout: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class Curve:
    """Held-out forget accuracy (dense) and test accuracy (sparse) along the attack, percent."""

    steps: list[int] = field(default_factory=list)
    forget_acc: list[float] = field(default_factory=list)
    test_steps: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """The attacker's best point: the maximum held-out forget accuracy over the attack."""
        return max(self.forget_acc)

    @property
    def last(self) -> float:
        return self.forget_acc[-1]


def relearn(
    model: nn.Module,
    data: RelearnData,
    cfg: RelearnConfig,
    base: Recipe,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[nn.Module, Curve]:
    """Attack a copy of ``model``; returns the attacked model and its recovery curve."""
    attacked = copy.deepcopy(model)
    curve = Curve()

    def record(step: int, m: nn.Module) -> None:
        curve.steps.append(step)
        curve.forget_acc.append(evaluate(m, data.x, data.y, data.heldout).acc)
        if step % cfg.test_every == 0 or step == cfg.steps:
            curve.test_steps.append(step)
            curve.test_acc.append(evaluate(m, data.x_test, data.y_test).acc)

    def hook(step: int, m: nn.Module) -> None:
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record(step, m)

    pool = torch.cat([data.retain, data.leaked.to(data.retain.device)])
    g = torch.Generator().manual_seed(seed + 1)
    fit(attacked, data.x, data.y, pool, cfg.recipe(base), generator=g, hook=hook,
        progress=progress, label=f"relearn k={len(data.leaked)}")
    return attacked, curve
