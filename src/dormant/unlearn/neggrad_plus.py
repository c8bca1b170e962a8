from __future__ import annotations

import math
from typing import ClassVar

from dormant.unlearn.base import (
    BACKDOOR_DOC,
    Preset,
    StoppableHparams,
    Strength,
    hyperparameters,
    register_method,
    stop_when_forgotten,
)


@hyperparameters
class NegGradPlusHparams(StoppableHparams):
    """NegGrad+ in the seed paper's alternating form: a full forget-set pass stepping on
    -CE, then a full retain-set pass stepping on CE, repeated (Kurmanji et al. 2023;
    Siddiqui et al. 2025 `alternating_gradient_ascent`, Adam lr 1e-5, unweighted passes).
    """

    # the ascent term dominates a full budget at the profile's rate
    strength: ClassVar[Strength | None] = Strength("lr", (0.03, 0.1, 0.3, 1.0))


@register_method("neggrad_plus", NegGradPlusHparams, presets={
    "backdoor": Preset({"steps": 50, "lr": 1e-4}, doc=BACKDOOR_DOC),
})
def neggrad_plus(model, data, hp, ctx):
    import torch
    import torch.nn.functional as F

    from dormant.engine import BatchStream, forward, train_loop

    recipe = hp.recipe(ctx.recipe)
    g = torch.Generator().manual_seed(ctx.seed)
    forget = BatchStream(data.forget, recipe.batch_size, g)
    retain = BatchStream(data.retain, recipe.batch_size, g)
    n_forget = math.ceil(len(data.forget) / forget.batch_size)
    cycle = n_forget + math.ceil(len(data.retain) / retain.batch_size)

    def loss(step):
        ascending = step % cycle < n_forget
        b = forget() if ascending else retain()
        ce = F.cross_entropy(forward(model, data.x, b, recipe, g), data.y[b])
        return -ce if ascending else ce

    train_loop(model, recipe, loss, hook=stop_when_forgotten(data, hp),
               progress=ctx.progress, label="neggrad_plus")
    return model
