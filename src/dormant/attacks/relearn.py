"""The relearning attack: fine-tune an unlearned model on retained data (plus k leaked forget
examples) and watch whether held-out forget accuracy comes back (Siddiqui et al. 2025)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import Field

from dormant.engine.recipe import Recipe
from dormant.errors import DormantError
from dormant.settings import Settings, one_line

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dormant.engine import Progress


@one_line("relearning attack")
class RelearnConfig(Settings):
    """Seed-paper defaults: a fresh Adam, lr 1e-5 with cosine decay to 1e-6, wd 0, batch 128,
    3,910 steps (10 epochs of the CIFAR-10 loader, the grid mode); held-out forget accuracy
    every 10 steps. The test set is evaluated only every ``test_every`` steps: it is the
    expensive part and the curve does not need it densely."""

    k: int = Field(0, ge=0)
    steps: int = Field(3_910, gt=0)
    lr: float = 1e-5
    final_lr: float = 1e-6
    batch_size: int = Field(128, gt=0)
    weight_decay: float = 0.0
    eval_every: int = Field(10, gt=0)
    test_every: int = Field(100, gt=0)

    def recipe(self, base: Recipe) -> Recipe:
        return Recipe(
            steps=self.steps, lr=self.lr, final_lr=self.final_lr, batch_size=self.batch_size,
            weight_decay=self.weight_decay, optimizer="adam", schedule="cosine",
            augment=base.augment, pad=base.pad,
        )


@dataclass(frozen=True)
class RelearnData:
    """What the attacker trains on and where recovery is measured.

    ``x``/``y`` hold the training images, and after them any test images the relearn set
    borrows (``pool`` indexes both parts); ``plain`` marks rows never augmented, as the seed
    code leaves test-derived images un-augmented. ``heldout`` indexes the training part."""

    x: torch.Tensor
    y: torch.Tensor
    pool: torch.Tensor
    heldout: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    plain: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        kind: str,
        x: torch.Tensor,
        y: torch.Tensor,
        x_test: torch.Tensor,
        y_test: torch.Tensor,
        retain: torch.Tensor,
        leaked: torch.Tensor,
        heldout: torch.Tensor,
        forget_classes: torch.Tensor,
    ) -> RelearnData:
        """The seed code's relearn sets, each with the ``leaked`` forget examples added:
        ``retain`` (the default), ``forget-only``, ``test`` (the test set), and
        ``test+retain-class`` (test images of the other classes plus the retain images of
        the forget set's classes)."""
        import torch

        dev = x.device
        retain, leaked = retain.to(dev), leaked.to(dev)
        if kind == "retain":
            return cls(x, y, torch.cat([retain, leaked]), heldout, x_test, y_test)
        if kind == "forget-only":
            if len(leaked) == 0:
                raise DormantError("relearn set forget-only needs k >= 1 leaked examples")
            return cls(x, y, leaked, heldout, x_test, y_test)
        if kind not in ("test", "test+retain-class"):
            raise DormantError(f"unknown relearn set {kind!r}")
        n = len(x)
        test_ids = torch.arange(n, n + len(x_test), device=dev)
        parts = [leaked]
        if kind == "test":
            parts.append(test_ids)
        else:
            in_class = torch.isin(y_test, forget_classes.to(y_test.device))
            parts += [test_ids[~in_class.to(dev)],
                      retain[torch.isin(y[retain], forget_classes.to(dev))]]
        plain = torch.zeros(n + len(x_test), dtype=torch.bool, device=dev)
        plain[n:] = True
        return cls(torch.cat([x, x_test]), torch.cat([y, y_test.to(dev)]), torch.cat(parts),
                   heldout, x_test, y_test, plain)


@dataclass
class Curve:
    """Held-out forget accuracy (dense) and test accuracy (sparse) along the attack, percent."""

    steps: list[int] = field(default_factory=list)
    forget_acc: list[float] = field(default_factory=list)
    test_steps: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    groups: list[list[float]] = field(default_factory=list)
    """Held-out forget accuracy of each of ``relearn``'s ``groups``, at ``steps``."""

    @property
    def best(self) -> float:
        """The attacker's best point: the maximum held-out forget accuracy over the attack."""
        return max(self.forget_acc)

    @property
    def last(self) -> float:
        return self.forget_acc[-1]

    @property
    def end(self) -> float:
        """Where the attack ends: the mean of the last 12.8% of points, as the seed paper
        summarises a run (:func:`dormant.metrics.end_mean`)."""
        from dormant.metrics.curves import end_mean

        return end_mean(self.forget_acc)


def relearn(
    model: nn.Module,
    data: RelearnData,
    cfg: RelearnConfig,
    base: Recipe,
    *,
    seed: int = 0,
    progress: Progress | None = None,
    groups: tuple[torch.Tensor, ...] = (),
) -> tuple[nn.Module, Curve]:
    """Attack a copy of ``model``; returns the attacked model and its recovery curve.
    ``groups``: more id sets whose forget accuracy the curve follows (``Curve.groups``), each
    evaluated on its own; the attack itself does not depend on them, so one attack serves
    every request of a batch that shares its training set."""
    import torch
    import torch.nn.functional as F

    from dormant.engine import BatchStream, evaluate, fit, prepare_model, to_float, train_loop
    from dormant.engine.augment import augment

    attacked = copy.deepcopy(model)
    curve = Curve(groups=[[] for _ in groups])

    def record(step: int, m: nn.Module) -> None:
        curve.steps.append(step)
        curve.forget_acc.append(evaluate(m, data.x, data.y, data.heldout).acc)
        for acc, ids in zip(curve.groups, groups, strict=True):
            acc.append(evaluate(m, data.x, data.y, ids).acc)
        if step % cfg.test_every == 0 or step == cfg.steps:
            curve.test_steps.append(step)
            curve.test_acc.append(evaluate(m, data.x_test, data.y_test).acc)

    def hook(step: int, m: nn.Module) -> None:
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record(step, m)

    recipe = cfg.recipe(base)
    g = torch.Generator().manual_seed(seed + 1)
    if data.plain is None:
        fit(attacked, data.x, data.y, data.pool, recipe, generator=g, hook=hook,
            progress=progress, label=f"relearn k={cfg.k}")
        return attacked, curve
    prepare_model(attacked, data.x.device)
    stream = BatchStream(data.pool, recipe.batch_size, g)

    def loss_fn(_step: int) -> torch.Tensor:
        b = stream()
        clean = to_float(data.x[b])
        seen = augment(clean, recipe.augment, recipe.pad, g)
        seen = torch.where(data.plain[b][:, None, None, None], clean, seen)
        return F.cross_entropy(attacked(seen), data.y[b])

    train_loop(attacked, recipe, loss_fn, hook=hook, progress=progress,
               label=f"relearn k={cfg.k}")
    return attacked, curve
