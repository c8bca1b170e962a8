from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from dormant.unlearn.base import (
    NonNegative,
    StoppableHparams,
    Strength,
    hyperparameters,
    register_method,
    stop_when_forgotten,
)

if TYPE_CHECKING:
    import torch


@hyperparameters
class RandomLabelHparams(StoppableHparams):
    """Random labels: fit the forget set to wrong labels while fitting the retain set to the
    true ones, in one joint step (Siddiqui et al. 2025 `random_relabeling`; Graves et al. 2021).

    Seed form: L = alpha * CE(retain, y) + CE(forget, y~), y~ = (y + u) mod C with
    u ~ U{1..C-1} redrawn every step, so y~ is never the true label; alpha = 1 as in the seed.
    Budget as in the seed: Adam lr 1e-5, 39,100 steps. SalUn's `RL` instead alternates a forget
    pass with y~ ~ U{0..C-1} and a retain pass (SGD momentum 0.9, wd 5e-4, 10 epochs).
    """

    # relabelled forget images are fitted fast; a full budget at the profile's rate over-forgets
    strength: ClassVar[Strength | None] = Strength("lr", (0.03, 0.1, 0.3, 1.0))

    alpha: NonNegative = 1.0


def random_wrong_labels(
    y: torch.Tensor, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """A uniformly drawn label other than ``y`` for each entry: (y + U{1..C-1}) mod C."""
    import torch

    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes


@register_method("random_label", RandomLabelHparams)
def random_label(model, data, hp, ctx):
    import torch
    import torch.nn.functional as F

    from dormant.engine import BatchStream, forward, train_loop

    recipe = hp.recipe(ctx.recipe)
    g = torch.Generator().manual_seed(ctx.seed)
    forget = BatchStream(data.forget, recipe.batch_size, g)
    retain = BatchStream(data.retain, recipe.batch_size, g)

    def loss(_step):
        r, f = retain(), forget()
        wrong = random_wrong_labels(data.y[f], data.num_classes, g)
        keep = F.cross_entropy(forward(model, data.x, r, recipe, g), data.y[r])
        return hp.alpha * keep + F.cross_entropy(forward(model, data.x, f, recipe, g), wrong)

    train_loop(model, recipe, loss, hook=stop_when_forgotten(data, hp),
               progress=ctx.progress, label="random_label")
    return model
