from dataclasses import dataclass

import torch

from dormant.engine import fit
from dormant.unlearn.base import StepHparams, register_method


@dataclass(frozen=True)
class FinetuneHparams(StepHparams):
    """Fine-tune on the retain set only and let catastrophic forgetting erase the forget set.

    Seed paper `catastrophic_forgetting`: Adam lr 1e-5, weight decay 1e-3, 39,100 steps.
    """

    weight_decay: float = 1e-3


@register_method("finetune", FinetuneHparams)
def finetune(model, data, hp, ctx):
    g = torch.Generator().manual_seed(ctx.seed)
    fit(model, data.x, data.y, data.retain, hp.recipe(ctx.recipe), generator=g,
        progress=ctx.progress, label="finetune")
    return model
