from __future__ import annotations

from dormant.unlearn.base import hyperparameters, register_method


@hyperparameters
class RetrainHparams:
    """Retrain from scratch on the retain set: the exact-unlearning oracle.

    Same initialisation, same recipe and same number of steps as the original model
    (Siddiqui et al. 2025, seed code `vision_unlearner.py`; no gradient ever comes from D_f).
    """


@register_method("retrain", RetrainHparams)
def retrain(model, data, hp, ctx):
    import torch

    from dormant.engine import fit

    fresh = ctx.init()
    g = torch.Generator().manual_seed(ctx.seed)
    fit(fresh, data.x, data.y, data.retain, ctx.recipe, generator=g,
        progress=ctx.progress, label="retrain")
    return fresh
