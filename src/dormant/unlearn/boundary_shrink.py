from __future__ import annotations

import copy
from typing import TYPE_CHECKING, ClassVar

from dormant.unlearn.base import (
    BACKDOOR_DOC,
    NonNegative,
    Preset,
    StoppableHparams,
    Strength,
    hyperparameters,
    register_method,
    stop_when_forgotten,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


@hyperparameters
class BoundaryShrinkHparams(StoppableHparams):
    """Boundary Shrink: relabel each forget sample with the class a one-step adversarial probe
    reaches from it and fine-tune on those labels (Chen et al. 2023).

    The probe is a frozen eval-mode copy of the starting weights. FGSM runs in [0, 1] pixel
    space on the augmented forget batch with ``epsilon`` = 0.1 (the authors' value):
    x_adv = clip(x + eps * sign(grad_x CE(probe(x), y))), y_nb = argmax probe(x_adv), and the
    loss is CE(model(x), y_nb) on that same batch, forget batches only. Where the step fails
    to cross a boundary y_nb equals y and is kept, as in the original. SalUn's port also rounds
    x_adv to the 1/255 grid; this one does not. Authors: SGD lr 1e-5, momentum 0.9, 10 epochs
    over D_f; the budget here follows the seed paper (Adam lr 1e-5, 39,100 steps).
    """

    # nearest-wrong-class labels are fitted fast, as random_label
    strength: ClassVar[Strength | None] = Strength("lr", (0.03, 0.1, 0.3, 1.0))

    epsilon: NonNegative = 0.1


def neighbour_labels(
    probe: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """argmax probe(FGSM(x)) for float inputs ``x`` in [0, 1]; ``probe`` is frozen."""
    import torch
    import torch.nn.functional as F

    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(probe(x), y), x)
    with torch.no_grad():
        return probe((x + epsilon * grad.sign()).clamp_(0.0, 1.0)).argmax(1)


@register_method("boundary_shrink", BoundaryShrinkHparams, presets={
    "backdoor": Preset({"steps": 10, "lr": 1e-4}, doc=BACKDOOR_DOC),
})
def boundary_shrink(model, data, hp, ctx):
    import torch
    import torch.nn.functional as F

    from dormant.engine import BatchStream, to_float, train_loop
    from dormant.engine.augment import augment

    recipe = hp.recipe(ctx.recipe)
    g = torch.Generator().manual_seed(ctx.seed)
    probe = copy.deepcopy(model).eval().requires_grad_(False)
    forget = BatchStream(data.forget, recipe.batch_size, g)

    def loss(_step):
        b = forget()
        xb = augment(to_float(data.x[b]), recipe.augment, recipe.pad, g)
        return F.cross_entropy(model(xb), neighbour_labels(probe, xb, data.y[b], hp.epsilon))

    train_loop(model, recipe, loss, hook=stop_when_forgotten(data, hp),
               progress=ctx.progress, label="boundary_shrink")
    return model
