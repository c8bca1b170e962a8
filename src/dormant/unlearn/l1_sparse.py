from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from dormant.unlearn.base import (
    NonNegative,
    StepHparams,
    Strength,
    hyperparameters,
    register_method,
)

if TYPE_CHECKING:
    import torch


@hyperparameters
class L1SparseHparams(StepHparams):
    """L1-sparse: fine-tune on the retain set with an L1 penalty that drives weights towards
    sparsity (Jia et al. 2023).

    Seed form (Siddiqui et al. 2025 `l1_sparse`): L = CE_retain + alpha * mean(|theta|) over
    every parameter entry, constant alpha = 1 (``reduction="mean"``, ``decay=False``), Adam
    lr 1e-5, 39,100 steps. SalUn's `FT_l1` form is ``reduction="sum"``, ``alpha=0.2`` (its
    shared `--alpha` default; the value Jia et al. tuned is not published) and ``decay=True``,
    alpha falling linearly to 0 over the run (SalUn decays per epoch), with SGD lr 0.01,
    momentum 0.9, wd 5e-4, 10 epochs.
    """

    # like fine-tuning, it forgets by drifting away on the retain set
    strength: ClassVar[Strength | None] = Strength("lr", (1.0, 3.0, 10.0, 30.0))

    alpha: NonNegative = 1.0
    reduction: Literal["mean", "sum"] = "mean"
    decay: bool = False


def l1_norm(params, reduction: str) -> torch.Tensor:
    """sum(|theta|) over all entries, or its mean over the entry count."""
    total = sum(p.abs().sum() for p in params)
    return total / sum(p.numel() for p in params) if reduction == "mean" else total


@register_method("l1_sparse", L1SparseHparams)
def l1_sparse(model, data, hp, ctx):
    import torch
    import torch.nn.functional as F

    from dormant.engine import BatchStream, forward, train_loop

    recipe = hp.recipe(ctx.recipe)
    g = torch.Generator().manual_seed(ctx.seed)
    retain = BatchStream(data.retain, recipe.batch_size, g)
    params = list(model.parameters())

    def loss(step):
        b = retain()
        alpha = hp.alpha * (1.0 - step / recipe.steps) if hp.decay else hp.alpha
        ce = F.cross_entropy(forward(model, data.x, b, recipe, g), data.y[b])
        return ce + alpha * l1_norm(params, hp.reduction)

    train_loop(model, recipe, loss, progress=ctx.progress, label="l1_sparse")
    return model
