from __future__ import annotations

from typing import ClassVar

from dormant.unlearn.base import (
    NonNegative,
    StepHparams,
    Strength,
    hyperparameters,
    register_method,
)


@hyperparameters
class FinetuneHparams(StepHparams):
    """Fine-tune on the retain set only and let catastrophic forgetting erase the forget set.

    Seed paper `catastrophic_forgetting`: Adam lr 1e-5, weight decay 1e-3, 39,100 steps.
    """

    # retain-only fine-tuning forgets only by drifting, which a larger learning rate speeds up
    strength: ClassVar[Strength | None] = Strength("lr", (1.0, 3.0, 10.0, 30.0))

    weight_decay: NonNegative = 1e-3


@register_method("finetune", FinetuneHparams)
def finetune(model, data, hp, ctx):
    import torch

    from dormant.engine import fit

    g = torch.Generator().manual_seed(ctx.seed)
    fit(model, data.x, data.y, data.retain, hp.recipe(ctx.recipe), generator=g,
        progress=ctx.progress, label="finetune")
    return model
