from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import Field

from dormant.unlearn.base import (
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
class SalUnHparams(StoppableHparams):
    """SalUn: random-label unlearning restricted to the weights most salient for the forget
    loss (Fan et al. 2024).

    The mask ranks |sum over forget batches of grad(-CE)| at the starting weights (eval mode)
    globally over every parameter entry and keeps the top ``ratio`` = 0.5 (the README example;
    the repo writes 0.1 to 1.0). The update is SalUn's own random-label variant for
    CIFAR-10: cycles of a forget pass on labels drawn from U{0..C-1} (which may equal y), then
    a retain pass on the true labels. Gradients are multiplied by the mask, and masked-out
    entries are reset to their starting values after every step, so weight decay and optimiser
    momentum cannot move them. Authors: SGD momentum 0.9, wd 5e-4, lr 0.013, 10 epochs; the
    budget here follows the seed paper (Adam lr 1e-5, 39,100 steps).
    """

    # random labels on the salient half of the weights, as random_label
    strength: ClassVar[Strength | None] = Strength("lr", (0.03, 0.1, 0.3, 1.0))

    ratio: Annotated[float, Field(gt=0, le=1)] = 0.5


def saliency_mask(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, ratio: float,
    batch_size: int,
) -> list[torch.Tensor]:
    """Boolean mask per parameter: the globally top ``ratio`` entries of |grad(-CE_forget)|,
    summed over batch-mean gradients in eval mode (SalUn `generate_mask.py`)."""
    import torch
    import torch.nn.functional as F

    from dormant.engine import to_float

    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()
    for start in range(0, len(ids), batch_size):
        b = ids[start : start + batch_size]
        loss = -F.cross_entropy(model(to_float(x[b])), y[b])
        for acc, gr in zip(grads, torch.autograd.grad(loss, params, allow_unused=True),
                           strict=True):
            if gr is not None:
                acc += gr
    model.train(was_training)
    flat = torch.cat([gr.abs().flatten() for gr in grads])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, round(ratio * len(flat)), sorted=False).indices] = True
    return [m.view_as(p) for m, p in zip(keep.split([p.numel() for p in params]), params,
                                         strict=True)]


@register_method("salun", SalUnHparams)
def salun(model, data, hp, ctx):
    import torch
    import torch.nn.functional as F

    from dormant.engine import BatchStream, forward, train_loop

    recipe = hp.recipe(ctx.recipe)
    g = torch.Generator().manual_seed(ctx.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    masks = saliency_mask(model, data.x, data.y, data.forget, hp.ratio, recipe.batch_size)
    start = [p.detach().clone() for p in params]
    forget = BatchStream(data.forget, recipe.batch_size, g)
    retain = BatchStream(data.retain, recipe.batch_size, g)
    n_forget = math.ceil(len(data.forget) / forget.batch_size)
    cycle = n_forget + math.ceil(len(data.retain) / retain.batch_size)
    stop = stop_when_forgotten(data, hp)

    def loss(step):
        if step % cycle < n_forget:
            b = forget()
            labels = torch.randint(0, data.num_classes, b.shape, generator=g).to(b.device)
        else:
            b = retain()
            labels = data.y[b]
        return F.cross_entropy(forward(model, data.x, b, recipe, g), labels)

    def after_step(done, model):
        with torch.no_grad():
            for p, m, p0 in zip(params, masks, start, strict=True):
                p.copy_(torch.where(m, p, p0))
        return stop is not None and stop(done, model)

    handles = [p.register_hook(lambda grad, m=m: grad * m) for p, m in zip(params, masks,
                                                                          strict=True)]
    try:
        train_loop(model, recipe, loss, params=params, hook=after_step,
                   progress=ctx.progress, label="salun")
    finally:
        for h in handles:
            h.remove()
    return model
