from __future__ import annotations

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
class GradientAscentHparams(StoppableHparams):
    """Gradient ascent: descend on -CE over the forget set only (Thudi et al. 2022; SalUn `GA`).

    The loss is unbounded below, so a fixed budget or ``stop_acc`` is essential. Optimiser as
    in the seed paper's unlearning: Adam, lr 1e-5.
    """

    # unbounded ascent over a full budget wipes the forget set out at the profile's rate
    strength: ClassVar[Strength | None] = Strength("lr", (0.01, 0.03, 0.1, 0.3))


@register_method("gradient_ascent", GradientAscentHparams, presets={
    "backdoor": Preset({"steps": 10, "lr": 1e-4}, doc=BACKDOOR_DOC),
})
def gradient_ascent(model, data, hp, ctx):
    import torch
    import torch.nn.functional as F

    from dormant.engine import BatchStream, forward, train_loop

    recipe = hp.recipe(ctx.recipe)
    g = torch.Generator().manual_seed(ctx.seed)
    forget = BatchStream(data.forget, recipe.batch_size, g)

    def loss(_step):
        b = forget()
        return -F.cross_entropy(forward(model, data.x, b, recipe, g), data.y[b])

    train_loop(model, recipe, loss, hook=stop_when_forgotten(data, hp),
               progress=ctx.progress, label="gradient_ascent")
    return model
